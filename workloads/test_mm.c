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
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t got_usr1;
static volatile long counters[3]; /* index 1 and 2 used */
static volatile int last_cpu[3];

static void on_usr1(int sig)
{
    (void)sig;
    got_usr1 = 1;
}

static void sleep_ms(long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    while (clock_nanosleep(CLOCK_MONOTONIC, 0, &ts, &ts) == EINTR)
        ;
}

static void *worker(void *arg)
{
    int id = (int)(long)arg;
    for (;;) {
        last_cpu[id] = sched_getcpu();
        printf("t%d %ld\n", id, counters[id]);
        counters[id]++;
        sleep_ms(100);
    }
    return NULL;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGUSR1, &sa, NULL) != 0) {
        perror("sigaction");
        return 2;
    }

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
        sleep_ms(20);

    printf("OK\n");
    fflush(stdout);
    exit(0);
}
