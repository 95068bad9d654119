/*
 * sharing: a parent and a child made by clone(CLONE_FILES | CLONE_FS): one fd
 * table and one cwd/root/umask for both, without being threads.
 *
 * Prints "READY child=<pid>". On SIGUSR1 the parent opens a file, changes
 * directory and umask, and checks through /proc that the child sees all three
 * (so they still share), then prints "OK" (exit 0) or "FAIL <reason>".
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "workload.h"

int main(void)
{
    workload_init();
    /* A fork (no stack given) that shares the fd table and fs state. */
    long child = syscall(SYS_clone, CLONE_FILES | CLONE_FS | SIGCHLD, 0, 0, 0, 0);
    if (child < 0)
        die("clone");
    if (child == 0) {
        for (;;)
            pause();
    }
    if (chdir("/tmp") != 0)
        die("chdir");
    umask(027);
    printf("READY child=%ld\n", child);
    wait_usr1();

    int fd = open("/dev/null", O_RDONLY);
    char path[64], target[PATH_MAX] = "";
    snprintf(path, sizeof path, "/proc/%ld/fd/%d", child, fd);
    if (fd < 0 || readlink(path, target, sizeof target - 1) < 0 || strcmp(target, "/dev/null") != 0)
        fail("the child does not see the parent's new fd %d (%s)", fd, target);
    if (chdir("/") != 0)
        die("chdir /");
    memset(target, 0, sizeof target);
    snprintf(path, sizeof path, "/proc/%ld/cwd", child);
    if (readlink(path, target, sizeof target - 1) < 0 || strcmp(target, "/") != 0)
        fail("the child's cwd is %s, not the parent's new one", target);
    umask(077);
    char status[4096] = "";
    snprintf(path, sizeof path, "/proc/%ld/status", child);
    FILE *f = fopen(path, "r");
    size_t n = f ? fread(status, 1, sizeof status - 1, f) : 0;
    status[n] = 0;
    if (!strstr(status, "Umask:\t0077"))
        fail("the child's umask is not the parent's new one");
    kill((pid_t)child, SIGKILL);
    succeed();
}
