/*
 * lazyfill MIB: memory restored lazily (post-copy), changed while it is
 * being filled.
 *
 * Maps MIB MiB (at least 4) of private anonymous memory, fills it with
 * xorshift64 data, prints "READY". On SIGUSR1 (sent right after a lazy
 * restore, while pages are still missing) it forks a child, which checks
 * all the memory and exits 0 or 1; then, in the parent, moves the second
 * quarter elsewhere (mremap), drops the first MiB of the third quarter
 * (madvise DONTNEED: must read zeros), unmaps the last MiB, and checks
 * everything left. Prints "CHILD OK" or "CHILD FAIL ...", then "OK"
 * (exit 0) or "FAIL <reason>" (exit 1).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "workload.h"

#define SEED 0x2545f4914f6cdd1dULL
#define MIB (1UL << 20)

/* Where word i of the original memory is now (NULL: not to be checked),
 * and whether it must read zero. */
struct layout {
    unsigned char *mem, *moved;
    size_t size, quarter;
    int changed;
};

static const unsigned char *where(const struct layout *l, size_t off, int *zero)
{
    *zero = 0;
    if (!l->changed)
        return l->mem + off;
    size_t q = l->quarter;
    if (off >= q && off < 2 * q)
        return l->moved + (off - q);
    if (off >= 2 * q && off < 2 * q + MIB) {
        *zero = 1;
        return l->mem + off;
    }
    if (off >= l->size - MIB)
        return NULL;
    return l->mem + off;
}

/* NULL if the memory is as it must be, else a reason. */
static const char *check(const struct layout *l, char *why, size_t len)
{
    uint64_t s = SEED;
    for (size_t off = 0; off < l->size; off += 8) {
        uint64_t want = xorshift64(&s), got;
        int zero;
        const unsigned char *at = where(l, off, &zero);
        if (!at)
            continue;
        memcpy(&got, at, 8);
        if (zero ? got != 0 : got != want) {
            snprintf(why, len, "word at offset %zu: %#llx", off, (unsigned long long)got);
            return why;
        }
    }
    return NULL;
}

int main(int argc, char **argv)
{
    unsigned long mib = argc == 2 ? strtoul(argv[1], NULL, 10) : 0;
    if (mib < 4) {
        fprintf(stderr, "usage: %s MIB (at least 4)\n", argv[0]);
        return 2;
    }
    workload_init();
    struct layout l = { 0 };
    l.size = mib * MIB;
    l.quarter = (mib / 4) * MIB;
    l.mem = mmap(NULL, l.size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (l.mem == MAP_FAILED)
        die("mmap");
    fill_xorshift64(l.mem, l.size, SEED);
    printf("READY\n");
    wait_usr1();

    char why[128];
    pid_t child = fork();
    if (child < 0)
        die("fork");
    if (child == 0) {
        const char *bad = check(&l, why, sizeof why);
        if (bad)
            printf("CHILD FAIL %s\n", bad);
        else
            printf("CHILD OK\n");
        fflush(stdout);
        _exit(bad ? 1 : 0);
    }
    void *to = mmap(NULL, l.quarter, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (to == MAP_FAILED)
        die("mmap");
    l.moved = mremap(l.mem + l.quarter, l.quarter, l.quarter, MREMAP_MAYMOVE | MREMAP_FIXED, to);
    if (l.moved == MAP_FAILED)
        die("mremap");
    if (madvise(l.mem + 2 * l.quarter, MIB, MADV_DONTNEED) != 0)
        die("madvise");
    if (munmap(l.mem + l.size - MIB, MIB) != 0)
        die("munmap");
    l.changed = 1;
    const char *bad = check(&l, why, sizeof why);
    int status;
    if (waitpid(child, &status, 0) != child)
        die("waitpid");
    if (bad)
        fail("%s", bad);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fail("the child found its memory wrong");
    succeed();
}
