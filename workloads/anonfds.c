/*
 * anonfds: holds eventfds, a signalfd, timerfds and an epoll watching some
 * of them, to check they come back.
 *
 *   fd A: eventfd, non-blocking, close-on-exec, count 42
 *   fd B: eventfd, blocking, count 0x100000005 (beyond eventfd2's 32-bit start)
 *   fd C: signalfd for SIGUSR2 (blocked), non-blocking
 *   fd E: epoll watching A (data 0xA11CE), C (edge-triggered, data 7) and the
 *         read end of a pipe holding "x" (data 99); B is not watched
 *   fd T1: timerfd, one-shot, an hour from now, non-blocking
 *   fd T2: timerfd, every 10 ms
 *   fd T3: timerfd, one-shot, expired with its one expiration unread
 *   fd T4: timerfd, CLOCK_REALTIME, an absolute deadline two hours ahead
 *
 * Prints "READY <pid>". The test sends SIGUSR2, which stays pending for C.
 * On SIGUSR1 checks what E reports, every count, flag and the pending
 * SIGUSR2 through C, and that A and C are empty afterwards; prints "OK" or
 * "FAIL <why>".
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include "workload.h"

int main(void)
{
    workload_init();
    sigset_t usr2;
    sigemptyset(&usr2);
    sigaddset(&usr2, SIGUSR2);
    if (sigprocmask(SIG_BLOCK, &usr2, NULL) != 0)
        die("sigprocmask");
    int a = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    int b = eventfd(0, 0);
    int c = signalfd(-1, &usr2, SFD_NONBLOCK);
    if (a < 0 || b < 0 || c < 0)
        die("eventfd/signalfd");
    uint64_t v = 40;
    if (write(a, &v, 8) != 8)
        die("write a");
    v = 2;
    if (write(a, &v, 8) != 8)
        die("write a");
    v = 0x100000005ULL;
    if (write(b, &v, 8) != 8)
        die("write b");
    int p[2];
    int e = epoll_create1(0);
    if (pipe(p) != 0 || write(p[1], "x", 1) != 1 || e < 0)
        die("pipe/epoll_create1");
    struct epoll_event ev = { .events = EPOLLIN, .data.u64 = 0xA11CE };
    if (epoll_ctl(e, EPOLL_CTL_ADD, a, &ev) != 0)
        die("epoll_ctl a");
    ev = (struct epoll_event){ .events = EPOLLIN | EPOLLET, .data.u64 = 7 };
    if (epoll_ctl(e, EPOLL_CTL_ADD, c, &ev) != 0)
        die("epoll_ctl c");
    ev = (struct epoll_event){ .events = EPOLLIN, .data.u64 = 99 };
    if (epoll_ctl(e, EPOLL_CTL_ADD, p[0], &ev) != 0)
        die("epoll_ctl pipe");
    int t1 = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    int t2 = timerfd_create(CLOCK_MONOTONIC, 0);
    int t3 = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    struct itimerspec hour = { .it_value = { 3600, 0 } };
    struct itimerspec every10ms = { .it_value = { 0, 10000000 }, .it_interval = { 0, 10000000 } };
    struct itimerspec once = { .it_value = { 0, 1000 } };
    if (t1 < 0 || t2 < 0 || t3 < 0 || timerfd_settime(t1, 0, &hour, NULL) || timerfd_settime(t2, 0, &every10ms, NULL) ||
        timerfd_settime(t3, 0, &once, NULL))
        die("timerfd");
    int t4 = timerfd_create(CLOCK_REALTIME, 0);
    struct itimerspec deadline = { 0 };
    clock_gettime(CLOCK_REALTIME, &deadline.it_value);
    deadline.it_value.tv_sec += 7200;
    if (t4 < 0 || timerfd_settime(t4, TFD_TIMER_ABSTIME, &deadline, NULL))
        die("timerfd t4");
    sleep_ms(20);
    printf("READY %d\n", (int)getpid());
    wait_usr1();

    struct itimerspec now;
    if (timerfd_gettime(t1, &now) || now.it_value.tv_sec < 3000 || now.it_value.tv_sec >= 3600 || now.it_interval.tv_sec ||
        now.it_interval.tv_nsec)
        fail("fd t1 has %lld s left, not just under an hour", (long long)now.it_value.tv_sec);
    if (read(t1, &v, 8) != -1 || errno != EAGAIN)
        fail("fd t1 expired");
    if (timerfd_gettime(t2, &now) || now.it_interval.tv_sec || now.it_interval.tv_nsec != 10000000)
        fail("fd t2 lost its 10 ms period");
    if (read(t2, &v, 8) != 8 || v < 1)
        fail("fd t2 did not tick");
    if (timerfd_gettime(t4, &now) || now.it_value.tv_sec < 7000 || now.it_value.tv_sec >= 7200)
        fail("fd t4 has %lld s left, not just under two hours", (long long)now.it_value.tv_sec);
    if (timerfd_gettime(t3, &now) || now.it_value.tv_sec || now.it_value.tv_nsec)
        fail("fd t3 is armed again");
    if (read(t3, &v, 8) != 8 || v != 1)
        fail("fd t3 lost its unread expiration");

    struct epoll_event got[8];
    int n = epoll_wait(e, got, 8, 0);
    if (n != 3)
        fail("epoll reports %d ready files, not 3", n);
    uint64_t seen = 0;
    for (int i = 0; i < n; i++) {
        uint64_t d = got[i].data.u64;
        if (!(got[i].events & EPOLLIN))
            fail("epoll event %#llx without EPOLLIN", (unsigned long long)d);
        seen |= d == 0xA11CE ? 1 : d == 7 ? 2 : d == 99 ? 4 : 8;
    }
    if (seen != 7)
        fail("epoll reported the wrong files (mask %#llx)", (unsigned long long)seen);
    /* C is edge-triggered: reported once; A and the pipe again. */
    n = epoll_wait(e, got, 8, 0);
    for (int i = 0; i < n; i++)
        if (got[i].data.u64 == 7)
            fail("fd c lost EPOLLET: reported twice");
    if (n != 2)
        fail("epoll reports %d files the second time, not 2", n);

    if (!(fcntl(a, F_GETFL) & O_NONBLOCK) || !(fcntl(a, F_GETFD) & FD_CLOEXEC))
        fail("fd a lost O_NONBLOCK or FD_CLOEXEC");
    if ((fcntl(b, F_GETFL) & O_NONBLOCK) || (fcntl(b, F_GETFD) & FD_CLOEXEC))
        fail("fd b gained O_NONBLOCK or FD_CLOEXEC");
    if (!(fcntl(c, F_GETFL) & O_NONBLOCK))
        fail("fd c lost O_NONBLOCK");
    if (read(a, &v, 8) != 8 || v != 42)
        fail("fd a counted %llu, not 42", (unsigned long long)v);
    if (read(a, &v, 8) != -1 || errno != EAGAIN)
        fail("fd a not empty after its read");
    if (read(b, &v, 8) != 8 || v != 0x100000005ULL)
        fail("fd b counted %#llx, not 0x100000005", (unsigned long long)v);
    struct signalfd_siginfo si;
    if (read(c, &si, sizeof si) != sizeof si || si.ssi_signo != SIGUSR2)
        fail("fd c did not read the pending SIGUSR2");
    if (read(c, &si, sizeof si) != -1 || errno != EAGAIN)
        fail("fd c read a second signal");
    succeed();
}
