/*
 * prefork MIB [CHILDREN]: a pre-forking server's memory: a heap shared
 * copy-on-write with its workers.
 *
 * The parent fills MIB MiB of private anonymous memory with a pattern, then
 * forks CHILDREN workers (4 by default). After the fork each worker writes
 * WRITES pages of the heap of its own (different pages for each) and
 * otherwise only reads it (a checksum of all of it); the parent writes
 * WRITES other pages. Worker 2 also gives DISCARDED pages back
 * (MADV_DONTNEED: they read as zeros in it). One page, at offset
 * UNTOUCHED_PAGE, is written by no one after the fork. Workers die with the
 * parent (PR_SET_PDEATHSIG).
 *
 * Prints "READY <pid> heap=<addr> len=<bytes> untouched=<addr> children=<pid,...>"
 * once every worker is ready.
 *
 * On SIGUSR1 (to the parent): the parent checks every page of its heap is
 * what it wrote, sends SIGUSR1 to each worker, which checks every page of its
 * own heap the same way (the pattern, its own pages, and the parent's pages
 * as they were at the fork) and exits 0 or 1; the parent prints "OK" (exit 0)
 * if all passed, else "FAIL <reason>" (exit 1).
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "workload.h"

#define PAGE 4096
#define WRITES 4
#define MAX_CHILDREN 16
#define UNTOUCHED_PAGE 7
/* Worker 2 discards pages [DISCARD_FROM, DISCARD_FROM + DISCARDED). */
#define DISCARDER 2
#define DISCARD_FROM 3000
#define DISCARDED 10

static uint64_t *heap;
static size_t heap_pages;

/* The pattern of the word at index i, as the parent wrote it before the fork. */
static uint64_t pattern(size_t i)
{
    return (uint64_t)i * 0x9E3779B97F4A7C15ull ^ 0x5eed;
}

/* Writer of a page after the fork: 0 the parent, 1..n a worker, -1 no one. */
static int page_writer(size_t page, int children)
{
    for (int w = 0; w <= children; w++)
        for (int k = 0; k < WRITES; k++)
            if (page == (size_t)(w * WRITES + k) * 97 + 11)
                return w;
    return -1;
}

/* What `who` (0 the parent, 1..n a worker) wrote into word i of a page it wrote. */
static uint64_t written(size_t i, int who)
{
    return ~pattern(i) ^ (uint64_t)(who + 1) << 56;
}

static void write_pages(int who, int children)
{
    for (size_t p = 0; p < heap_pages; p++)
        if (page_writer(p, children) == who)
            for (size_t i = p * PAGE / 8; i < (p + 1) * PAGE / 8; i++)
                heap[i] = written(i, who);
}

static int discarded(size_t page, int who)
{
    return who == DISCARDER && page >= DISCARD_FROM && page < DISCARD_FROM + DISCARDED;
}

/* 0 if every page of the heap is as `who` should see it; else the first bad word's index + 1. */
static size_t check_heap(int who, int children)
{
    for (size_t p = 0; p < heap_pages; p++) {
        int w = page_writer(p, children);
        for (size_t i = p * PAGE / 8; i < (p + 1) * PAGE / 8; i++) {
            uint64_t want = discarded(p, who) ? 0 : w == who ? written(i, who) : pattern(i);
            if (heap[i] != want)
                return i + 1;
        }
    }
    return 0;
}

static uint64_t checksum(void)
{
    uint64_t sum = 0;
    for (size_t i = 0; i < heap_pages * PAGE / 8; i++)
        sum = sum * 31 + heap[i];
    return sum;
}

static _Noreturn void worker(int who, int children, int ready_fd)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    write_pages(who, children);
    if (who == DISCARDER && madvise((char *)heap + DISCARD_FROM * PAGE, DISCARDED * PAGE, MADV_DONTNEED) != 0)
        _exit(2);
    uint64_t sum = checksum();
    if (write(ready_fd, "r", 1) != 1)
        _exit(2);
    close(ready_fd);
    wait_usr1();
    size_t bad = check_heap(who, children);
    if (bad) {
        fprintf(stderr, "worker %d: word %zu of the heap is %#llx\n", who, bad - 1, (unsigned long long)heap[bad - 1]);
        _exit(1);
    }
    _exit(checksum() == sum ? 0 : 1);
}

int main(int argc, char **argv)
{
    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: %s MIB [CHILDREN]\n", argv[0]);
        return 2;
    }
    int children = argc == 3 ? atoi(argv[2]) : 4;
    if (children < 1 || children > MAX_CHILDREN)
        die("CHILDREN");
    workload_init();
    size_t len = (size_t)atol(argv[1]) << 20;
    heap_pages = len / PAGE;
    if (heap_pages < (size_t)(children + 1) * WRITES * 97 + 11 || heap_pages < DISCARD_FROM + DISCARDED)
        die("MIB too small");
    heap = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (heap == MAP_FAILED)
        die("mmap");
    for (size_t i = 0; i < len / 8; i++)
        heap[i] = pattern(i);

    int ready[2];
    if (pipe(ready) != 0)
        die("pipe");
    pid_t pids[MAX_CHILDREN];
    for (int w = 1; w <= children; w++) {
        pids[w - 1] = fork();
        if (pids[w - 1] < 0)
            die("fork");
        if (pids[w - 1] == 0) {
            close(ready[0]);
            worker(w, children, ready[1]);
        }
    }
    close(ready[1]);
    for (int w = 0; w < children; w++) {
        char c;
        if (read(ready[0], &c, 1) != 1)
            die("a worker did not start");
    }
    close(ready[0]);
    write_pages(0, children);
    uint64_t sum = checksum();

    printf("READY %d heap=%lu len=%zu untouched=%lu children=", (int)getpid(), (unsigned long)heap, len,
           (unsigned long)heap + UNTOUCHED_PAGE * PAGE);
    for (int w = 0; w < children; w++)
        printf("%s%d", w ? "," : "", (int)pids[w]);
    printf("\n");
    wait_usr1();

    size_t bad = check_heap(0, children);
    if (bad)
        fail("parent: word %zu of the heap is %#llx", bad - 1, (unsigned long long)heap[bad - 1]);
    if (checksum() != sum)
        fail("parent: checksum differs");
    for (int w = 0; w < children; w++)
        kill(pids[w], SIGUSR1);
    for (int w = 0; w < children; w++) {
        int status;
        if (waitpid(pids[w], &status, 0) != pids[w])
            fail("waitpid of worker %d", w + 1);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
            fail("worker %d (pid %d) ended with status %#x", w + 1, (int)pids[w], status);
    }
    succeed();
}
