/*
 * eintr: a process sleeping in pause() with a handler for SIGUSR2 (no
 * SA_RESTART), which the kernel interrupts with EINTR when the signal comes.
 * Each time pause() returns it prints "pause returned R errno E"; SIGUSR1
 * ends it with OK.
 * READY
 */
#define _GNU_SOURCE
#include <unistd.h>
#include "workload.h"

static volatile sig_atomic_t usr2;

static void on_usr2(int sig)
{
    (void)sig;
    usr2++;
}

int main(void)
{
    workload_init();
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr2;
    if (sigaction(SIGUSR2, &sa, NULL) != 0)
        die("sigaction");
    printf("READY\n");
    while (!got_usr1) {
        int r = pause();
        printf("pause returned %d errno %d usr2 %d\n", r, errno, (int)usr2);
    }
    printf("OK\n");
    return 0;
}
