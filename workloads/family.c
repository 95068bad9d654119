/*
 * family FILE: process tree + file descriptor workload.
 *
 * Forks a child that loops sleeping 50 ms; the child exits 0 when its parent
 * changes (getppid() differs from the original) or when it receives SIGUSR1
 * itself (it prints nothing).
 *
 * The parent then opens FILE O_RDWR, reads (up to) 1000 bytes and lseeks to
 * offset 12345; opens /dev/null; creates a pipe and writes
 * "pipe-data-0123456789\n" 10 times (210 bytes) into it without reading.
 * Prints "READY child=<pid> file_fd=<n> pipe_r=<n> pipe_w=<n> null_fd=<n>".
 *
 * On SIGUSR1 (to the parent): checks the file offset is 12345, the pipe
 * holds exactly the 210 bytes written, the /dev/null fd is still open and
 * is /dev/null, the child is still alive and our child; then kills and reaps
 * the child and prints "OK" (exit 0) or "FAIL <reason>" (exit 1).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "workload.h"

#define FILE_POS 12345
#define PIPE_MSG "pipe-data-0123456789\n"
#define PIPE_REPEAT 10

static void child_loop(pid_t orig_ppid)
{
    for (;;) {
        if (got_usr1 || getppid() != orig_ppid)
            _exit(0);
        sleep_ms(50);
    }
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s FILE\n", argv[0]);
        return 2;
    }

    workload_init();

    pid_t me = getpid();
    pid_t child = fork();
    if (child < 0)
        die("fork");
    if (child == 0)
        child_loop(me);

    int file_fd = open(argv[1], O_RDWR);
    if (file_fd < 0)
        die("open FILE");
    char buf[1000];
    if (read(file_fd, buf, sizeof buf) < 0)
        die("read FILE");
    if (lseek(file_fd, FILE_POS, SEEK_SET) != FILE_POS)
        die("lseek FILE");

    int null_fd = open("/dev/null", O_RDWR);
    if (null_fd < 0)
        die("open /dev/null");

    int p[2];
    if (pipe(p) != 0)
        die("pipe");
    size_t msg_len = strlen(PIPE_MSG);
    for (int i = 0; i < PIPE_REPEAT; i++) {
        if (write(p[1], PIPE_MSG, msg_len) != (ssize_t)msg_len)
            die("write pipe");
    }

    /* FILE mapped shared and read-only from an fd open for writing, which
     * is closed: the mapping may still be made writable. */
    int map_fd = open(argv[1], O_RDWR);
    char *shared = map_fd < 0 ? MAP_FAILED : mmap(NULL, 4096, PROT_READ, MAP_SHARED, map_fd, 0);
    if (shared == MAP_FAILED)
        die("mmap FILE");
    close(map_fd);

    printf("READY child=%d file_fd=%d pipe_r=%d pipe_w=%d null_fd=%d\n",
           (int)child, file_fd, p[0], p[1], null_fd);
    fflush(stdout);

    wait_usr1();

    char reason[256] = "";
    size_t total = msg_len * PIPE_REPEAT;
    off_t pos = lseek(file_fd, 0, SEEK_CUR);
    int avail = -1;
    struct stat st;

    if (pos != FILE_POS) {
        snprintf(reason, sizeof reason, "file position %lld != %d",
                 (long long)pos, FILE_POS);
    } else if (ioctl(p[0], FIONREAD, &avail) != 0 || avail != (int)total) {
        snprintf(reason, sizeof reason, "pipe holds %d bytes, expected %zu",
                 avail, total);
    } else {
        char pbuf[PIPE_REPEAT * sizeof(PIPE_MSG)];
        size_t got = 0;
        while (got < total) {
            ssize_t n = read(p[0], pbuf + got, total - got);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0)
                break;
            got += (size_t)n;
        }
        if (got != total) {
            snprintf(reason, sizeof reason, "read %zu bytes from pipe, expected %zu",
                     got, total);
        } else {
            for (int i = 0; i < PIPE_REPEAT; i++) {
                if (memcmp(pbuf + (size_t)i * msg_len, PIPE_MSG, msg_len) != 0) {
                    snprintf(reason, sizeof reason, "pipe data mismatch in chunk %d", i);
                    break;
                }
            }
        }
    }

    if (!reason[0] && mprotect(shared, 4096, PROT_READ | PROT_WRITE) != 0)
        snprintf(reason, sizeof reason, "mprotect(PROT_WRITE) of the shared mapping of FILE: %s", strerror(errno));
    if (!reason[0]) {
        if (fcntl(null_fd, F_GETFD) < 0)
            snprintf(reason, sizeof reason, "/dev/null fd %d closed: %s",
                     null_fd, strerror(errno));
        else if (fstat(null_fd, &st) != 0 || !S_ISCHR(st.st_mode) ||
                 major(st.st_rdev) != 1 || minor(st.st_rdev) != 3)
            snprintf(reason, sizeof reason, "fd %d is not /dev/null", null_fd);
        else if (fcntl(p[1], F_GETFD) < 0)
            snprintf(reason, sizeof reason, "pipe write fd %d closed", p[1]);
    }

    /* Child must still be alive and ours. */
    int status;
    pid_t w = waitpid(child, &status, WNOHANG);
    if (!reason[0] && w != 0) {
        if (w == child)
            snprintf(reason, sizeof reason, "child %d already exited (status 0x%x)",
                     (int)child, status);
        else
            snprintf(reason, sizeof reason, "child %d not waitable: %s", (int)child,
                     strerror(errno));
    }
    if (w == 0) {
        kill(child, SIGKILL);
        while ((w = waitpid(child, &status, 0)) < 0 && errno == EINTR)
            ;
        if (!reason[0] && w != child)
            snprintf(reason, sizeof reason, "reaping child %d failed: %s",
                     (int)child, strerror(errno));
        else if (!reason[0] && !(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL))
            snprintf(reason, sizeof reason, "child %d exited unexpectedly (status 0x%x)",
                     (int)child, status);
    }

    if (reason[0])
        fail("%s", reason);
    succeed();
}
