/*
 * memfds: memfds held by a parent and its child, checked after a restore.
 *
 *   "crust-shared"       5 pages, the first 3 written, the rest a hole; sealed
 *                        against shrinking and growing; fd A (O_RDWR, offset
 *                        1234), fd B a dup of A, fd C a second open of it
 *                        (O_RDONLY, offset 7); mapped MAP_SHARED; all inherited
 *                        by the child
 *   "crust-mapped-only"  mapped MAP_SHARED, then its fd closed (sealing not
 *                        allowed: F_SEAL_SEAL)
 *   "crust-sealed"       close-on-exec, O_RDWR, sealed against writes and more seals
 *
 * Prints "READY <pid> child=<pid>", waits for SIGUSR1, checks everything, then
 * asks the child (through the shared mapping) to write into both memfds and
 * checks that it sees the child's writes: the memfds are still shared.
 * Prints "OK" or "FAIL ...".
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "workload.h"

#define PAGE 4096L
#define SIZE (5 * PAGE)
/* Flags in the last page of the shared memfd: the parent's request, the child's answer. */
#define ASK (4 * PAGE + 100)
#define DONE (4 * PAGE + 200)

static char byte_at(long i)
{
    return (char)('a' + i % 23);
}

static void child_loop(volatile char *shared, volatile char *mapped_only, int fd)
{
    while (shared[ASK] != 1)
        sleep_ms(10);
    if (pwrite(fd, "child-was-here", 14, 3 * PAGE) != 14)
        _exit(3);
    memcpy((char *)mapped_only + 100, "child", 5);
    shared[DONE] = 1;
    _exit(0);
}

static void check_name(int fd, const char *name)
{
    char path[64], link[256];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(path, link, sizeof link - 1);
    link[n < 0 ? 0 : n] = 0;
    char want[256];
    snprintf(want, sizeof want, "/memfd:%s (deleted)", name);
    if (strcmp(link, want) != 0)
        fail("fd %d is %s, expected %s", fd, link, want);
}

static void check_shared(int a, int b, int c, char *shared)
{
    struct stat st;
    char buf[3 * PAGE];
    check_name(a, "crust-shared");
    if (fstat(a, &st) != 0 || st.st_size != SIZE)
        fail("shared: size %lld", (long long)st.st_size);
    if (pread(a, buf, sizeof buf, 0) != (ssize_t)sizeof buf)
        fail("shared: pread");
    for (long i = 0; i < 3 * PAGE; i++)
        if (buf[i] != byte_at(i) || shared[i] != byte_at(i))
            fail("shared: byte %ld is %d", i, buf[i]);
    if (shared[3 * PAGE + 5] != 0 || shared[SIZE - 1] != 0)
        fail("shared: the hole is not zero");
    if (fcntl(a, F_GET_SEALS) != (F_SEAL_SHRINK | F_SEAL_GROW))
        fail("shared: seals %#x", fcntl(a, F_GET_SEALS));
    if (ftruncate(a, PAGE) == 0 || errno != EPERM)
        fail("shared: shrinking was not refused");
    if (lseek(a, 0, SEEK_CUR) != 1234 || lseek(c, 0, SEEK_CUR) != 7)
        fail("offsets %lld and %lld", (long long)lseek(a, 0, SEEK_CUR), (long long)lseek(c, 0, SEEK_CUR));
    if (lseek(b, 99, SEEK_SET) != 99 || lseek(a, 0, SEEK_CUR) != 99)
        fail("fds A and B no longer share their offset");
    if (lseek(c, 0, SEEK_CUR) != 7)
        fail("fd C shares A's offset");
    if ((fcntl(a, F_GETFL) & O_ACCMODE) != O_RDWR || (fcntl(c, F_GETFL) & O_ACCMODE) != O_RDONLY)
        fail("access modes %#o %#o", fcntl(a, F_GETFL), fcntl(c, F_GETFL));
    /* The mapping and the fds are one object. */
    shared[10] = 'Z';
    if (pread(c, buf, 1, 10) != 1 || buf[0] != 'Z')
        fail("shared: the mapping is not the file");
}

static void check_sealed(int s)
{
    char buf[8];
    check_name(s, "crust-sealed");
    if (fcntl(s, F_GET_SEALS) != (F_SEAL_WRITE | F_SEAL_SEAL))
        fail("sealed: seals %#x", fcntl(s, F_GET_SEALS));
    if (!(fcntl(s, F_GETFD) & FD_CLOEXEC))
        fail("sealed: not close-on-exec");
    if (pwrite(s, "x", 1, 0) != -1 || errno != EPERM)
        fail("sealed: a write was not refused");
    if (pread(s, buf, 6, 0) != 6 || memcmp(buf, "sealed", 6) != 0)
        fail("sealed: contents");
}

int main(void)
{
    workload_init();
    int a = memfd_create("crust-shared", MFD_ALLOW_SEALING);
    if (a < 0 || ftruncate(a, SIZE) != 0)
        die("memfd crust-shared");
    char *shared = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, a, 0);
    if (shared == MAP_FAILED)
        die("mmap crust-shared");
    for (long i = 0; i < 3 * PAGE; i++)
        shared[i] = byte_at(i);
    if (fcntl(a, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) != 0 || lseek(a, 1234, SEEK_SET) != 1234)
        die("seal crust-shared");
    int b = dup(a);
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", a);
    int c = open(path, O_RDONLY);
    if (b < 0 || c < 0 || lseek(c, 7, SEEK_SET) != 7)
        die("second open of crust-shared");

    int m = memfd_create("crust-mapped-only", 0);
    if (m < 0 || ftruncate(m, PAGE) != 0)
        die("memfd crust-mapped-only");
    char *mapped_only = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, m, 0);
    if (mapped_only == MAP_FAILED)
        die("mmap crust-mapped-only");
    strcpy(mapped_only, "mapped-only");
    close(m);

    int s = memfd_create("crust-sealed", MFD_ALLOW_SEALING | MFD_CLOEXEC);
    if (s < 0 || write(s, "sealed", 6) != 6 || fcntl(s, F_ADD_SEALS, F_SEAL_WRITE | F_SEAL_SEAL) != 0)
        die("memfd crust-sealed");

    pid_t child = fork();
    if (child < 0)
        die("fork");
    if (child == 0)
        child_loop(shared, mapped_only, a);
    printf("READY %d child=%d\n", (int)getpid(), (int)child);
    wait_usr1();

    check_shared(a, b, c, shared);
    check_sealed(s);
    if (strcmp(mapped_only, "mapped-only") != 0)
        fail("mapped-only: contents %.20s", mapped_only);
    shared[ASK] = 1;
    for (int i = 0; i < 500 && shared[DONE] != 1; i++)
        sleep_ms(10);
    char buf[14];
    if (shared[DONE] != 1)
        fail("the child did not answer through the shared memfd");
    if (pread(c, buf, 14, 3 * PAGE) != 14 || memcmp(buf, "child-was-here", 14) != 0)
        fail("the child's write to the shared memfd is not seen");
    if (memcmp(mapped_only + 100, "child", 5) != 0)
        fail("the child's write to the mapped-only memfd is not seen");
    int status;
    if (waitpid(child, &status, 0) != child || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fail("child status %#x", status);
    succeed();
}
