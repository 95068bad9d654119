/*
 * bigmem MIB: large anonymous memory workload.
 *
 * Maps MIB MiB of private anonymous memory, fills every byte with xorshift64
 * pseudo-random data, and prints "READY <fnv1a64 checksum, hex>".
 * On SIGUSR1: recomputes the checksum; prints "OK" (exit 0) if it matches,
 * else "FAIL <reason>" (exit 1).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t got_usr1;

static void on_usr1(int sig)
{
    (void)sig;
    got_usr1 = 1;
}

static uint64_t checksum(const unsigned char *b, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    char *end;
    errno = 0;
    unsigned long mib = argc == 2 ? strtoul(argv[1], &end, 10) : 0;
    if (argc != 2 || errno || *end || mib == 0) {
        fprintf(stderr, "usage: %s MIB (positive integer)\n", argv[0]);
        return 2;
    }

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGUSR1, &sa, NULL) != 0) {
        perror("sigaction");
        return 2;
    }

    size_t size = (size_t)mib << 20;
    unsigned char *mem = mmap(NULL, size, PROT_READ | PROT_WRITE,
                              MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) {
        perror("mmap");
        return 2;
    }
    uint64_t s = 0x2545f4914f6cdd1dULL;
    for (size_t i = 0; i < size; i += 8) {
        uint64_t x = s;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s = x;
        memcpy(mem + i, &x, 8);
    }

    uint64_t sum = checksum(mem, size);
    printf("READY %016llx\n", (unsigned long long)sum);
    fflush(stdout);

    while (!got_usr1) {
        struct timespec ts = { 0, 20 * 1000000L };
        nanosleep(&ts, NULL);
    }

    uint64_t now = checksum(mem, size);
    if (now != sum) {
        printf("FAIL checksum %016llx != %016llx\n", (unsigned long long)now,
               (unsigned long long)sum);
        fflush(stdout);
        exit(1);
    }
    printf("OK\n");
    fflush(stdout);
    exit(0);
}
