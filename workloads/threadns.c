/*
 * threadns: a second thread unshares a uts namespace of its own and names
 * it; the main thread stays in the process's. Namespaces belong to threads,
 * so /proc/PID/ns (the leader's) does not show it. On SIGUSR1 the thread
 * checks its name is still its own: OK, else FAIL.
 * READY <the thread's tid>
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <unistd.h>
#include "workload.h"

#define NAME "crust-thread-uts"

static volatile int ready, verdict, thread_tid;

static void *own_uts(void *arg)
{
    (void)arg;
    if (unshare(CLONE_NEWUTS) != 0 || sethostname(NAME, strlen(NAME)) != 0)
        die("unshare/sethostname in the thread");
    thread_tid = (int)gettid();
    ready = 1;
    while (!got_usr1)
        sleep_ms(10);
    char name[64] = "";
    gethostname(name, sizeof name - 1);
    verdict = strcmp(name, NAME) == 0 ? 1 : 2;
    return NULL;
}

int main(void)
{
    workload_init();
    pthread_t th;
    if (pthread_create(&th, NULL, own_uts, NULL) != 0)
        die("pthread_create");
    while (!ready)
        sleep_ms(1);
    printf("READY %d\n", thread_tid);
    wait_usr1();
    pthread_join(th, NULL);
    if (verdict != 1)
        fail("the thread's host name is no longer its own");
    succeed();
}
