/*
 * dirtier MIB: memory that changes a little between checkpoints, for chains
 * of incremental dumps (pre-dump, pre-dump, dump).
 *
 * Maps MIB MiB of private anonymous memory and fills it with xorshift64
 * data, then prints "READY pages=N" (N: pages of that memory).
 * On SIGUSR2 (a step): counts the step, writes a known pattern over the
 * STEP_PAGES pages of that step (each step its own pages, wrapping around),
 * and prints "STEP n".
 * On SIGUSR1: rebuilds what the memory must hold from the seed and the steps
 * counted, compares it byte by byte; prints "CHECKED steps=n" and "OK"
 * (exit 0), or "FAIL <reason>" (exit 1).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "workload.h"

#define SEED 0x9e3779b97f4a7c15ULL
#define PAGE 4096
/* Pages written by each step: 1 MiB. */
#define STEP_PAGES 256

static volatile sig_atomic_t got_usr2;

static void on_usr2(int sig)
{
    (void)sig;
    got_usr2 = 1;
}

/* Step n (from 1) writes its pages: each page filled with byte n, then the
 * step and page number at its start. */
static void write_step(unsigned char *mem, size_t pages, unsigned long n)
{
    size_t first = ((n - 1) * STEP_PAGES) % pages;
    for (size_t i = 0; i < STEP_PAGES && i < pages; i++) {
        size_t page = (first + i) % pages;
        unsigned char *p = mem + page * PAGE;
        memset(p, (int)(n & 0xff), PAGE);
        uint64_t tag[2] = { n, page };
        memcpy(p, tag, sizeof tag);
    }
}

int main(int argc, char **argv)
{
    char *end;
    errno = 0;
    unsigned long mib = argc == 2 ? strtoul(argv[1], &end, 10) : 0;
    if (argc != 2 || errno || *end || mib == 0) {
        fprintf(stderr, "usage: %s MIB (positive integer)\n", argv[0]);
        return 2;
    }
    workload_init();
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr2;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGUSR2, &sa, NULL) != 0)
        die("sigaction");

    size_t size = (size_t)mib << 20, pages = size / PAGE;
    unsigned char *mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED)
        die("mmap");
    fill_xorshift64(mem, size, SEED);
    unsigned long steps = 0;
    printf("READY pages=%zu\n", pages);

    while (!got_usr1) {
        if (got_usr2) {
            got_usr2 = 0;
            steps++;
            write_step(mem, pages, steps);
            printf("STEP %lu\n", steps);
        }
        sleep_ms(10);
    }

    /* What the memory must hold, made again from nothing but the seed and
     * the number of steps. */
    unsigned char *want = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (want == MAP_FAILED)
        die("mmap");
    fill_xorshift64(want, size, SEED);
    for (unsigned long n = 1; n <= steps; n++)
        write_step(want, pages, n);
    for (size_t page = 0; page < pages; page++) {
        if (memcmp(mem + page * PAGE, want + page * PAGE, PAGE) != 0)
            fail("page %zu of %zu differs after %lu steps", page, pages, steps);
    }
    printf("CHECKED steps=%lu\n", steps);
    succeed();
}
