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
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>

#include "workload.h"

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

    size_t size = (size_t)mib << 20;
    unsigned char *mem = mmap(NULL, size, PROT_READ | PROT_WRITE,
                              MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED)
        die("mmap");
    fill_xorshift64(mem, size, 0x2545f4914f6cdd1dULL);

    uint64_t sum = fnv1a(FNV_OFFSET, mem, size);
    printf("READY %016llx\n", (unsigned long long)sum);
    fflush(stdout);

    wait_usr1();

    uint64_t now = fnv1a(FNV_OFFSET, mem, size);
    if (now != sum)
        fail("checksum %016llx != %016llx", (unsigned long long)now,
             (unsigned long long)sum);
    succeed();
}
