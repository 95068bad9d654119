/*
 * pidfds: a parent holding a pidfd of its child and a non-blocking pidfd of
 * itself. After SIGUSR1 it checks that each names the same process (fdinfo's
 * Pid:), then ends the child through its pidfd (pidfd_send_signal) and reaps
 * it through it (waitid P_PIDFD). Prints "READY <pid> child=<pid>", then
 * "OK" or "FAIL ...".
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "workload.h"

#ifndef PIDFD_NONBLOCK
#define PIDFD_NONBLOCK O_NONBLOCK
#endif

static int pidfd_pid(int fd)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/self/fdinfo/%d", fd);
    FILE *f = fopen(path, "r");
    int pid = 0;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "Pid: %d", &pid) == 1)
            break;
    if (f)
        fclose(f);
    return pid;
}

int main(void)
{
    workload_init();
    pid_t child = fork();
    if (child < 0)
        die("fork");
    if (child == 0) {
        for (;;)
            pause();
    }
    int of_child = (int)syscall(SYS_pidfd_open, child, 0);
    int of_self = (int)syscall(SYS_pidfd_open, getpid(), PIDFD_NONBLOCK);
    if (of_child < 0 || of_self < 0)
        die("pidfd_open");
    printf("READY %d child=%d\n", (int)getpid(), (int)child);
    wait_usr1();
    if (pidfd_pid(of_child) != child || pidfd_pid(of_self) != getpid())
        fail("the pidfds name %d and %d", pidfd_pid(of_child), pidfd_pid(of_self));
    if (!(fcntl(of_self, F_GETFL) & O_NONBLOCK) || (fcntl(of_child, F_GETFL) & O_NONBLOCK))
        fail("pidfd flags %#x %#x", fcntl(of_self, F_GETFL), fcntl(of_child, F_GETFL));
    if (syscall(SYS_pidfd_send_signal, of_child, SIGTERM, NULL, 0) != 0)
        fail("pidfd_send_signal: %s", strerror(errno));
    siginfo_t info;
    memset(&info, 0, sizeof info);
    if (waitid(P_PIDFD, of_child, &info, WEXITED) != 0 || info.si_pid != child || info.si_status != SIGTERM)
        fail("waitid through the pidfd: pid %d status %d", info.si_pid, info.si_status);
    succeed();
}
