/*
 * workload.h: helpers shared by the test workloads (one program per .c file;
 * this header is not a program). Include it after defining _GNU_SOURCE.
 *
 * Protocol the helpers serve: a workload prints "READY ...", waits for
 * SIGUSR1, then prints "OK" (exit 0) or "FAIL <reason>" (exit 1); setup
 * errors go to stderr with exit 2.
 */
#ifndef WORKLOAD_H
#define WORKLOAD_H

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Set by the SIGUSR1 handler. */
static volatile sig_atomic_t got_usr1;

static inline void on_usr1(int sig)
{
    (void)sig;
    got_usr1 = 1;
}

/* Installs on_usr1 for SIGUSR1 (no flags, empty mask); sigaction's result. */
static inline int catch_usr1(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sigemptyset(&sa.sa_mask);
    return sigaction(SIGUSR1, &sa, NULL);
}

/* perror(what), exit 2. */
static inline _Noreturn void die(const char *what)
{
    perror(what);
    exit(2);
}

/* Line-buffers stdout and installs the SIGUSR1 handler (die on failure). */
static inline void workload_init(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (catch_usr1() != 0)
        die("sigaction");
}

/* Sleeps ms milliseconds; a signal handler ends the sleep early. */
static inline void sleep_ms(long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
}

/* Sleeps ms milliseconds on CLOCK_MONOTONIC, resuming after handlers. */
static inline void sleep_ms_full(long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    while (clock_nanosleep(CLOCK_MONOTONIC, 0, &ts, &ts) == EINTR)
        ;
}

/* Polls every 20 ms until SIGUSR1 has arrived. */
static inline void wait_usr1(void)
{
    while (!got_usr1)
        sleep_ms(20);
}

/* "FAIL <printf-formatted reason>", exit 1. */
static inline _Noreturn void fail(const char *fmt, ...)
    __attribute__((format(printf, 1, 2)));

static inline _Noreturn void fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("FAIL ", stdout);
    vprintf(fmt, ap);
    va_end(ap);
    fputc('\n', stdout);
    fflush(stdout);
    exit(1);
}

/* "OK", exit 0. */
static inline _Noreturn void succeed(void)
{
    printf("OK\n");
    fflush(stdout);
    exit(0);
}

/* FNV-1a 64: continue hash h over n bytes at p; start with FNV_OFFSET. */
#define FNV_OFFSET 0xcbf29ce484222325ULL
#define FNV_PRIME 0x100000001b3ULL

static inline uint64_t fnv1a(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= FNV_PRIME;
    }
    return h;
}

/* xorshift64 (13, 7, 17): advances *s and returns the new state. */
static inline uint64_t xorshift64(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *s = x;
    return x;
}

/* Fills n bytes (a multiple of 8) at p with successive xorshift64 values
 * from seed, each stored as 8 bytes in native byte order. */
static inline void fill_xorshift64(unsigned char *p, size_t n, uint64_t seed)
{
    uint64_t s = seed;
    for (size_t i = 0; i < n; i += 8) {
        uint64_t v = xorshift64(&s);
        memcpy(p + i, &v, 8);
    }
}

#endif /* WORKLOAD_H */
