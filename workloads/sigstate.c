/*
 * sigstate: signal-state workload.
 *
 * Sets up:
 *   - SIGUSR2 handler (SA_SIGINFO|SA_RESTART);
 *   - SIGRTMIN+1 handler (SA_SIGINFO|SA_ONSTACK) recording si_value/si_code
 *     and whether it ran on the alternate stack;
 *   - SIGHUP ignored (SIG_IGN);
 *   - SIGUSR2 and SIGRTMIN+1 blocked, then raise(SIGUSR2) (thread-directed,
 *     via tgkill) and sigqueue(self, SIGRTMIN+1, 42) (process-directed), so
 *     both stay pending;
 *   - a 64 KiB sigaltstack;
 *   - ITIMER_REAL with value and interval 1000 s.
 * Prints "READY".
 *
 * On SIGUSR1: checks both signals still pending and blocked, the SIGHUP
 * disposition, the SIGUSR2 and SIGRTMIN+1 handlers and flags, the altstack
 * (ss_sp, ss_size, enabled), and the itimer (armed, interval 1000 s); then
 * unblocks both signals and checks SIGUSR2's handler ran and SIGRTMIN+1's
 * handler got si_value 42 with si_code SI_QUEUE on the alternate stack.
 * Prints "OK" (exit 0) or "FAIL <reason>" (exit 1).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

#include "workload.h"

#define ALTSTACK_SIZE (64 * 1024)
#define TIMER_SEC 1000

static volatile sig_atomic_t usr2_ran;
static volatile sig_atomic_t rt_ran;
static volatile sig_atomic_t rt_value = -1;
static volatile sig_atomic_t rt_code;
static volatile sig_atomic_t rt_on_altstack;

static char *altstack;

static void on_usr2(int sig, siginfo_t *si, void *uc)
{
    (void)sig;
    (void)si;
    (void)uc;
    usr2_ran = 1;
}

static void on_rt(int sig, siginfo_t *si, void *uc)
{
    (void)sig;
    (void)uc;
    char local;
    uintptr_t a = (uintptr_t)&local;
    uintptr_t lo = (uintptr_t)altstack;
    rt_on_altstack = (a >= lo && a < lo + ALTSTACK_SIZE);
    rt_value = si->si_value.sival_int;
    rt_code = si->si_code;
    rt_ran = 1;
}

/* Installs an SA_SIGINFO handler with the given extra flags (empty mask). */
static void catch_siginfo(int sig, void (*fn)(int, siginfo_t *, void *), int flags,
                          const char *what)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    sa.sa_sigaction = fn;
    sa.sa_flags = SA_SIGINFO | flags;
    if (sigaction(sig, &sa, NULL) != 0)
        die(what);
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    const int sigrt = SIGRTMIN + 1;

    if (catch_usr1() != 0)
        die("sigaction SIGUSR1");

    catch_siginfo(SIGUSR2, on_usr2, SA_RESTART, "sigaction SIGUSR2");
    catch_siginfo(sigrt, on_rt, SA_ONSTACK, "sigaction SIGRTMIN+1");

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    sa.sa_handler = SIG_IGN;
    if (sigaction(SIGHUP, &sa, NULL) != 0)
        die("sigaction SIGHUP");

    /* Record the flags exactly as the kernel reports them (glibc adds
     * SA_RESTORER), to compare after restore. */
    struct sigaction orig_usr2, orig_rt;
    if (sigaction(SIGUSR2, NULL, &orig_usr2) != 0 || sigaction(sigrt, NULL, &orig_rt) != 0)
        die("sigaction query");

    sigset_t block;
    sigemptyset(&block);
    sigaddset(&block, SIGUSR2);
    sigaddset(&block, sigrt);
    if (sigprocmask(SIG_BLOCK, &block, NULL) != 0)
        die("sigprocmask");
    if (raise(SIGUSR2) != 0)
        die("raise");
    union sigval v = { .sival_int = 42 };
    if (sigqueue(getpid(), sigrt, v) != 0)
        die("sigqueue");

    altstack = malloc(ALTSTACK_SIZE);
    if (!altstack)
        die("malloc");
    stack_t ss = { .ss_sp = altstack, .ss_size = ALTSTACK_SIZE, .ss_flags = 0 };
    if (sigaltstack(&ss, NULL) != 0)
        die("sigaltstack");

    struct itimerval it = {
        .it_interval = { TIMER_SEC, 0 },
        .it_value = { TIMER_SEC, 0 },
    };
    if (setitimer(ITIMER_REAL, &it, NULL) != 0)
        die("setitimer");

    printf("READY\n");
    fflush(stdout);

    wait_usr1();

    /* Pending and blocked. */
    sigset_t pend, cur;
    if (sigpending(&pend) != 0)
        fail("sigpending: %s", strerror(errno));
    if (!sigismember(&pend, SIGUSR2))
        fail("SIGUSR2 not pending");
    if (!sigismember(&pend, sigrt))
        fail("SIGRTMIN+1 not pending");
    if (sigprocmask(SIG_BLOCK, NULL, &cur) != 0)
        fail("sigprocmask query: %s", strerror(errno));
    if (!sigismember(&cur, SIGUSR2) || !sigismember(&cur, sigrt))
        fail("SIGUSR2/SIGRTMIN+1 no longer blocked");
    if (sigismember(&cur, SIGUSR1))
        fail("SIGUSR1 unexpectedly blocked");
    if (usr2_ran || rt_ran)
        fail("blocked handler ran early");

    /* Dispositions. */
    struct sigaction q;
    if (sigaction(SIGHUP, NULL, &q) != 0 || q.sa_handler != SIG_IGN)
        fail("SIGHUP disposition is not SIG_IGN");
    if (sigaction(SIGUSR2, NULL, &q) != 0)
        fail("sigaction SIGUSR2 query: %s", strerror(errno));
    if (q.sa_sigaction != on_usr2)
        fail("SIGUSR2 handler changed (%p != %p)", (void *)q.sa_sigaction, (void *)on_usr2);
    if (q.sa_flags != orig_usr2.sa_flags || (q.sa_flags & (SA_SIGINFO | SA_RESTART)) !=
                                                (SA_SIGINFO | SA_RESTART))
        fail("SIGUSR2 flags 0x%x != 0x%x", (unsigned)q.sa_flags, (unsigned)orig_usr2.sa_flags);
    if (sigaction(sigrt, NULL, &q) != 0)
        fail("sigaction SIGRTMIN+1 query: %s", strerror(errno));
    if (q.sa_sigaction != on_rt)
        fail("SIGRTMIN+1 handler changed");
    if (q.sa_flags != orig_rt.sa_flags)
        fail("SIGRTMIN+1 flags 0x%x != 0x%x", (unsigned)q.sa_flags, (unsigned)orig_rt.sa_flags);

    /* Alternate stack. */
    stack_t cs;
    if (sigaltstack(NULL, &cs) != 0)
        fail("sigaltstack query: %s", strerror(errno));
    if (cs.ss_sp != altstack || cs.ss_size != ALTSTACK_SIZE)
        fail("sigaltstack changed: sp=%p size=%zu (want %p %d)", cs.ss_sp, cs.ss_size,
             (void *)altstack, ALTSTACK_SIZE);
    if (cs.ss_flags & SS_DISABLE)
        fail("sigaltstack disabled");

    /* Interval timer. */
    struct itimerval ci;
    if (getitimer(ITIMER_REAL, &ci) != 0)
        fail("getitimer: %s", strerror(errno));
    if (ci.it_interval.tv_sec != TIMER_SEC || ci.it_interval.tv_usec != 0)
        fail("itimer interval %ld.%06ld", (long)ci.it_interval.tv_sec,
             (long)ci.it_interval.tv_usec);
    if (ci.it_value.tv_sec == 0 && ci.it_value.tv_usec == 0)
        fail("itimer not armed");
    if (ci.it_value.tv_sec > TIMER_SEC)
        fail("itimer value %ld s > %d s", (long)ci.it_value.tv_sec, TIMER_SEC);

    /* Deliver the pending signals. */
    if (sigprocmask(SIG_UNBLOCK, &block, NULL) != 0)
        fail("sigprocmask unblock: %s", strerror(errno));
    for (int i = 0; i < 50 && !(usr2_ran && rt_ran); i++)
        sleep_ms(20);
    if (!usr2_ran)
        fail("SIGUSR2 handler did not run");
    if (!rt_ran)
        fail("SIGRTMIN+1 handler did not run");
    if (rt_value != 42)
        fail("SIGRTMIN+1 si_value %d != 42", (int)rt_value);
    if (rt_code != SI_QUEUE)
        fail("SIGRTMIN+1 si_code %d != SI_QUEUE", (int)rt_code);
    if (!rt_on_altstack)
        fail("SIGRTMIN+1 handler did not run on the alternate stack");

    succeed();
}
