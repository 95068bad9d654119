/*
 * forker: a process tree that changes all the time.
 *
 * Prints "READY <pid>", then forks a child every 2 ms. Each child sleeps
 * 20 ms and exits 0 (so about ten children are alive at any time), and dies
 * with its parent (PR_SET_PDEATHSIG). SIGCHLD is ignored, so the kernel
 * reaps the children: the tree never holds a zombie. Every 50 forks the
 * parent prints "forks <n>", n the number of forks so far.
 *
 * On SIGUSR1 (to the parent): prints "OK" and exits 0 if every fork so far
 * succeeded, else "FAIL <reason>" (exit 1).
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#include "workload.h"

int main(void)
{
    workload_init();
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_IGN;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGCHLD, &sa, NULL) != 0)
        die("sigaction SIGCHLD");

    pid_t me = getpid();
    printf("READY %d\n", (int)me);
    fflush(stdout);

    long forks = 0, failed = 0;
    while (!got_usr1) {
        pid_t pid = fork();
        if (pid == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (getppid() != me)
                _exit(0);
            sleep_ms_full(20);
            _exit(0);
        }
        if (pid < 0)
            failed++;
        else if (++forks % 50 == 0)
            printf("forks %ld\n", forks);
        sleep_ms(2);
    }
    if (failed)
        fail("%ld of %ld forks failed", failed, forks + failed);
    succeed();
}
