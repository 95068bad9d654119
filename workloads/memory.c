/*
 * memory FILE: memory-layout workload.
 *
 * Sets up:
 *   - 64 MiB private anonymous RW memory, filled with xorshift64 data;
 *   - 1 MiB anonymous memory filled with a pattern, then mprotect PROT_READ;
 *   - a hole: 3 pages PROT_NONE mapped, the middle one unmapped (two VMAs
 *     with a gap between them);
 *   - FILE (>= 256 KiB, created by the caller) mapped MAP_PRIVATE RW, with
 *     pages 0, 3 and 17 modified and the others untouched; the fd is closed;
 *   - a few KiB of malloc()ed heap with a pattern;
 *   - a stack array with a pattern.
 * Prints "READY <fnv1a64 checksum over all readable regions, hex>".
 *
 * On SIGUSR1: recomputes the checksum, checks the hole layout (outer pages
 * still mapped, middle page unmapped) and the read-only protection of the
 * 1 MiB region (via /proc/self/maps), prints "OK" (exit 0) or
 * "FAIL <reason>" (exit 1).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "workload.h"

#define BIG_SIZE (64UL << 20)
#define RO_SIZE (1UL << 20)
#define HEAP_SIZE (6 * 1024)
#define STACK_SIZE 4096
#define MIN_FILE_SIZE (256 * 1024)

struct regions {
    unsigned char *big;
    unsigned char *ro;
    unsigned char *hole; /* 3 pages, middle unmapped */
    unsigned char *file;
    size_t file_size;
    unsigned char *heap;
    unsigned char *stack;
};

static uint64_t checksum(const struct regions *r)
{
    uint64_t h = FNV_OFFSET;
    h = fnv1a(h, r->big, BIG_SIZE);
    h = fnv1a(h, r->ro, RO_SIZE);
    h = fnv1a(h, r->file, r->file_size);
    h = fnv1a(h, r->heap, HEAP_SIZE);
    h = fnv1a(h, r->stack, STACK_SIZE);
    return h;
}

/* 1 if the page at addr is mapped, 0 if not (ENOMEM), -1 on other errors. */
static int page_mapped(void *addr, size_t page)
{
    unsigned char vec;
    if (mincore(addr, page, &vec) == 0)
        return 1;
    return errno == ENOMEM ? 0 : -1;
}

/* Copies the permission string of the mapping containing addr into perms;
 * returns 0 if found, -1 otherwise. */
static int maps_perms(const void *addr, char perms[5])
{
    FILE *f = fopen("/proc/self/maps", "r");
    if (!f)
        return -1;
    char line[512];
    int found = -1;
    while (fgets(line, sizeof line, f)) {
        unsigned long start, end;
        char p[5];
        if (sscanf(line, "%lx-%lx %4s", &start, &end, p) == 3 &&
            start <= (unsigned long)addr && (unsigned long)addr < end) {
            memcpy(perms, p, 5);
            found = 0;
            break;
        }
    }
    fclose(f);
    return found;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s FILE\n", argv[0]);
        return 2;
    }

    workload_init();

    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    struct regions r;
    unsigned char stack_buf[STACK_SIZE];

    /* 64 MiB pseudo-random. */
    r.big = mmap(NULL, BIG_SIZE, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (r.big == MAP_FAILED)
        die("mmap big");
    fill_xorshift64(r.big, BIG_SIZE, 0x9e3779b97f4a7c15ULL);

    /* 1 MiB read-only. */
    r.ro = mmap(NULL, RO_SIZE, PROT_READ | PROT_WRITE,
                MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (r.ro == MAP_FAILED)
        die("mmap ro");
    for (size_t i = 0; i < RO_SIZE; i++)
        r.ro[i] = (unsigned char)((i * 31 + 7) ^ (i >> 12));
    if (mprotect(r.ro, RO_SIZE, PROT_READ) != 0)
        die("mprotect ro");

    /* Hole: 3 PROT_NONE pages, middle unmapped. */
    r.hole = mmap(NULL, 3 * page, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (r.hole == MAP_FAILED)
        die("mmap hole");
    if (munmap(r.hole + page, page) != 0)
        die("munmap hole");

    /* Private file mapping with a few modified pages. */
    int fd = open(argv[1], O_RDONLY);
    if (fd < 0)
        die("open FILE");
    struct stat st;
    if (fstat(fd, &st) != 0)
        die("fstat FILE");
    if (st.st_size < MIN_FILE_SIZE) {
        fprintf(stderr, "FILE must be at least %d bytes (is %lld)\n",
                MIN_FILE_SIZE, (long long)st.st_size);
        return 2;
    }
    r.file_size = (size_t)st.st_size;
    r.file = mmap(NULL, r.file_size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    if (r.file == MAP_FAILED)
        die("mmap FILE");
    close(fd);
    static const int dirty_pages[] = { 0, 3, 17 };
    for (size_t k = 0; k < sizeof dirty_pages / sizeof dirty_pages[0]; k++) {
        unsigned char *pg = r.file + (size_t)dirty_pages[k] * page;
        for (size_t i = 0; i < 64; i++)
            pg[i * 17 % page] = (unsigned char)(0xA5 ^ (i + (size_t)dirty_pages[k]));
    }

    /* Heap. */
    r.heap = malloc(HEAP_SIZE);
    if (!r.heap)
        die("malloc");
    for (size_t i = 0; i < HEAP_SIZE; i++)
        r.heap[i] = (unsigned char)(i * 7 + 3);

    /* Stack. */
    for (size_t i = 0; i < STACK_SIZE; i++)
        stack_buf[i] = (unsigned char)(i * 13 + 5);
    r.stack = stack_buf;

    uint64_t sum = checksum(&r);
    printf("READY %016llx\n", (unsigned long long)sum);
    fflush(stdout);

    wait_usr1();

    char reason[256] = "";
    uint64_t now = checksum(&r);
    if (now != sum) {
        snprintf(reason, sizeof reason, "checksum %016llx != %016llx",
                 (unsigned long long)now, (unsigned long long)sum);
    } else if (page_mapped(r.hole, page) != 1 ||
               page_mapped(r.hole + 2 * page, page) != 1) {
        snprintf(reason, sizeof reason, "hole outer pages not mapped");
    } else if (page_mapped(r.hole + page, page) != 0) {
        snprintf(reason, sizeof reason, "hole middle page is mapped");
    } else {
        char perms[5];
        if (maps_perms(r.ro, perms) != 0)
            snprintf(reason, sizeof reason, "ro region not in /proc/self/maps");
        else if (strncmp(perms, "r--p", 4) != 0)
            snprintf(reason, sizeof reason, "ro region perms %s", perms);
        else if (maps_perms(r.hole, perms) != 0 || strncmp(perms, "---p", 4) != 0)
            snprintf(reason, sizeof reason, "hole page perms wrong");
    }

    if (reason[0])
        fail("%s", reason);
    succeed();
}
