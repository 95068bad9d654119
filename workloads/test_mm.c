/*
 * test_mm: multi-threaded workload.
 *
 * Prints "READY <pid>", then starts two threads. Thread i (1 and 2) prints
 * "t<i> <counter>" every 100 ms, its counter starting at 0 and incrementing
 * by 1 per line. Every iteration each thread calls sched_getcpu() (exercises
 * rseq after restore). Counters live in a global array.
 *
 * On SIGUSR1: prints "OK" and exits 0.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "workload.h"

static volatile long counters[3]; /* index 1 and 2 used */
static volatile int last_cpu[3];

static void *worker(void *arg)
{
    int id = (int)(long)arg;
    for (;;) {
        last_cpu[id] = sched_getcpu();
        printf("t%d %ld\n", id, counters[id]);
        counters[id]++;
        sleep_ms_full(100);
    }
    return NULL;
}

int main(void)
{
    workload_init();

    printf("READY %d\n", (int)getpid());
    fflush(stdout);

    pthread_t th[2];
    for (long i = 1; i <= 2; i++) {
        int rc = pthread_create(&th[i - 1], NULL, worker, (void *)i);
        if (rc != 0) {
            fprintf(stderr, "pthread_create: %s\n", strerror(rc));
            return 2;
        }
    }

    while (!got_usr1)
        sleep_ms_full(20);

    succeed();
}
