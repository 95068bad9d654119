/*
 * eventfds: holds two eventfds and a signalfd, to check they come back.
 *
 *   fd A: eventfd, non-blocking, close-on-exec, count 42
 *   fd B: eventfd, blocking, count 0x100000005 (beyond eventfd2's 32-bit start)
 *   fd C: signalfd for SIGUSR2 (blocked), non-blocking
 *
 * Prints "READY <pid>". The test sends SIGUSR2, which stays pending for C.
 * On SIGUSR1 checks every count, flag and the pending SIGUSR2 through C,
 * and that A and C are empty afterwards; prints "OK" or "FAIL <why>".
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
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
    printf("READY %d\n", (int)getpid());
    wait_usr1();

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
