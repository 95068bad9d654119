/*
 * ptimers: POSIX timers (timer_create) of every kind of delivery, to check
 * they come back with their ids, clocks, values, intervals and targets.
 *
 * Two threads: main and a worker. Timers (ids made sparse: spare timers are
 * created and some deleted first, so the ids to keep are not 0, 1, 2...):
 *   periodic  CLOCK_MONOTONIC, 200 ms, SIGEV_SIGNAL SIGRTMIN+1, sival_int 1111
 *   thread    CLOCK_BOOTTIME, 300 ms, SIGEV_THREAD_ID to the worker,
 *             SIGRTMIN+2, sival_ptr &thread_cookie
 *   oneshot   CLOCK_REALTIME, 3600 s one-shot, SIGEV_SIGNAL SIGRTMIN+3
 *   none      CLOCK_MONOTONIC, SIGEV_NONE, 1000 s then every 7 s
 *   cpu       CLOCK_PROCESS_CPUTIME_ID, 100 s of CPU, SIGEV_SIGNAL SIGRTMIN+3
 *   workercpu the worker's CPU clock (pthread_getcpuclockid), 100 s
 *   pending   CLOCK_MONOTONIC, 1 ms one-shot, SIGEV_SIGNAL SIGRTMIN+4, which
 *             every thread blocks: it has fired and its signal waits
 *   blocked   CLOCK_MONOTONIC, 50 ms periodic, SIGEV_SIGNAL SIGRTMIN+5, also
 *             blocked: its signal waits, and the kernel counts the periods
 *             missed meanwhile as overruns instead of queueing more
 *   tpending  CLOCK_MONOTONIC, 1 ms one-shot, SIGEV_THREAD_ID to the worker,
 *             SIGRTMIN+6, which the worker blocks: pending in the worker
 * Prints "READY <pid> worker=<tid>" once the periodic timers have delivered
 * a few times each. (Their periods are long enough that a delivery late by a
 * whole period, whose overrun count a dump refuses, is unlikely on a loaded
 * machine.)
 *
 * On SIGUSR1: timer_gettime works on every id and shows each clock's times
 * going on (the one-shot has no more left than before, and no less than
 * before minus the time that passed); the periodic ones go on delivering
 * with their si_value and si_timerid, the thread one to the worker only; the
 * pending signals are there exactly once, from their timers (the periodic
 * one with its overruns, and it goes on after it is taken); a new timer gets
 * an id of its own. Prints "OK" or "FAIL <reason>".
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "workload.h"

#define SIG_PERIODIC (SIGRTMIN + 1)
#define SIG_THREAD (SIGRTMIN + 2)
#define SIG_QUIET (SIGRTMIN + 3)
#define SIG_PENDING (SIGRTMIN + 4)
#define SIG_BLOCKED (SIGRTMIN + 5)
#define SIG_TPENDING (SIGRTMIN + 6)

static timer_t periodic, thread_t, oneshot, none, cpu, workercpu, pending, blocked, tpending;
static int thread_cookie;
static pid_t worker_tid;

static atomic_int worker_take, periodic_n, periodic_bad, thread_n, thread_bad, quiet_n;
static char bad_why[160];

static long long ns(const struct timespec *t)
{
    return t->tv_sec * 1000000000LL + t->tv_nsec;
}

static long long now_ns(clockid_t c)
{
    struct timespec t;
    clock_gettime(c, &t);
    return ns(&t);
}

static int kernel_id(timer_t t)
{
    return (int)(intptr_t)t;
}

static void on_timer(int sig, siginfo_t *si, void *uc)
{
    (void)uc;
    pid_t tid = (pid_t)syscall(SYS_gettid);
    if (sig == SIG_PERIODIC) {
        periodic_n++;
        if (si->si_code != SI_TIMER || si->si_value.sival_int != 1111 || si->si_timerid != kernel_id(periodic)) {
            snprintf(bad_why, sizeof bad_why, "periodic: code %d value %d timerid %d", si->si_code, si->si_value.sival_int, si->si_timerid);
            periodic_bad++;
        }
    } else if (sig == SIG_THREAD) {
        thread_n++;
        if (si->si_code != SI_TIMER || si->si_value.sival_ptr != &thread_cookie || si->si_timerid != kernel_id(thread_t) || tid != worker_tid) {
            snprintf(bad_why, sizeof bad_why, "thread: code %d ptr %p timerid %d in tid %d", si->si_code, si->si_value.sival_ptr, si->si_timerid, tid);
            thread_bad++;
        }
    } else {
        quiet_n++;
    }
}

static void take_pending(timer_t t, int sig, int value, int min_overrun);

/* Blocks SIG_TPENDING; when told (worker_take 1), takes its pending signal. */
static void *worker(void *arg)
{
    (void)arg;
    sigset_t block;
    sigemptyset(&block);
    sigaddset(&block, SIG_TPENDING);
    pthread_sigmask(SIG_BLOCK, &block, NULL);
    worker_tid = (pid_t)syscall(SYS_gettid);
    for (;;) {
        if (worker_take == 1) {
            take_pending(tpending, SIG_TPENDING, 6666, 0);
            worker_take = 2;
        }
        sleep_ms(10);
    }
    return NULL;
}

static timer_t make(clockid_t clock, int notify, int sig, union sigval v, pid_t tid)
{
    struct sigevent sev;
    memset(&sev, 0, sizeof sev);
    sev.sigev_notify = notify;
    sev.sigev_signo = sig;
    sev.sigev_value = v;
    sev._sigev_un._tid = tid;
    timer_t t;
    if (timer_create(clock, &sev, &t))
        die("timer_create");
    return t;
}

static void arm(timer_t t, long long value_ms, long long interval_ms)
{
    struct itimerspec its = {
        .it_value = { value_ms / 1000, (value_ms % 1000) * 1000000 },
        .it_interval = { interval_ms / 1000, (interval_ms % 1000) * 1000000 },
    };
    if (timer_settime(t, 0, &its, NULL))
        die("timer_settime");
}

static void get(const char *name, timer_t t, struct itimerspec *its)
{
    if (timer_gettime(t, its))
        fail("timer_gettime of %s (id %d): %s", name, kernel_id(t), strerror(errno));
}

/* Waits up to 3 s for *n to reach want. */
static int wait_count(atomic_int *n, int want)
{
    for (int i = 0; i < 300 && *n < want; i++)
        sleep_ms(10);
    return *n >= want;
}

/* Takes the pending signal sig of timer t, which must be there once, with
 * value and at least min_overrun overruns. */
static void take_pending(timer_t t, int sig, int value, int min_overrun)
{
    siginfo_t si;
    sigset_t only;
    struct timespec zero_ts = { 0, 0 };
    sigemptyset(&only);
    sigaddset(&only, sig);
    if (sigtimedwait(&only, &si, &zero_ts) != sig)
        fail("the pending signal of timer %d is gone: %s", kernel_id(t), strerror(errno));
    if (si.si_code != SI_TIMER || si.si_timerid != kernel_id(t) || si.si_value.sival_int != value || si.si_overrun < min_overrun)
        fail("pending signal of timer %d: code %d timerid %d value %d overrun %d", kernel_id(t), si.si_code, si.si_timerid,
             si.si_value.sival_int, si.si_overrun);
    if (sigtimedwait(&only, &si, &zero_ts) >= 0)
        fail("the pending signal of timer %d is there twice", kernel_id(t));
}

int main(void)
{
    workload_init();
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_timer;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigaction(SIG_PERIODIC, &sa, NULL);
    sigaction(SIG_THREAD, &sa, NULL);
    sigaction(SIG_QUIET, &sa, NULL);
    sigset_t block;
    sigemptyset(&block);
    sigaddset(&block, SIG_PENDING);
    sigaddset(&block, SIG_BLOCKED);
    sigprocmask(SIG_BLOCK, &block, NULL);

    pthread_t w;
    if (pthread_create(&w, NULL, worker, NULL))
        die("pthread_create");
    while (!worker_tid)
        sleep_ms(1);
    clockid_t wclock;
    if (pthread_getcpuclockid(w, &wclock))
        die("pthread_getcpuclockid");

    union sigval zero = { 0 };
    timer_t spare[4];
    for (int i = 0; i < 4; i++)
        spare[i] = make(CLOCK_MONOTONIC, SIGEV_NONE, 0, zero, 0);
    timer_delete(spare[1]);
    timer_delete(spare[3]);
    periodic = make(CLOCK_MONOTONIC, SIGEV_SIGNAL, SIG_PERIODIC, (union sigval){ .sival_int = 1111 }, 0);
    timer_delete(spare[0]);
    thread_t = make(CLOCK_BOOTTIME, SIGEV_THREAD_ID, SIG_THREAD, (union sigval){ .sival_ptr = &thread_cookie }, worker_tid);
    oneshot = make(CLOCK_REALTIME, SIGEV_SIGNAL, SIG_QUIET, zero, 0);
    none = make(CLOCK_MONOTONIC, SIGEV_NONE, 0, zero, 0);
    cpu = make(CLOCK_PROCESS_CPUTIME_ID, SIGEV_SIGNAL, SIG_QUIET, zero, 0);
    workercpu = make(wclock, SIGEV_SIGNAL, SIG_QUIET, zero, 0);
    pending = make(CLOCK_MONOTONIC, SIGEV_SIGNAL, SIG_PENDING, (union sigval){ .sival_int = 4444 }, 0);
    arm(periodic, 200, 200);
    arm(thread_t, 300, 300);
    arm(oneshot, 3600 * 1000, 0);
    arm(none, 1000 * 1000, 7000);
    arm(cpu, 100 * 1000, 0);
    arm(workercpu, 100 * 1000, 0);
    blocked = make(CLOCK_MONOTONIC, SIGEV_SIGNAL, SIG_BLOCKED, (union sigval){ .sival_int = 5555 }, 0);
    tpending = make(CLOCK_MONOTONIC, SIGEV_THREAD_ID, SIG_TPENDING, (union sigval){ .sival_int = 6666 }, worker_tid);
    arm(pending, 1, 0);
    arm(tpending, 1, 0);
    arm(blocked, 50, 50);
    long long start = now_ns(CLOCK_MONOTONIC);
    struct itimerspec first;
    get("oneshot", oneshot, &first);

    if (!wait_count(&periodic_n, 3) || !wait_count(&thread_n, 2))
        fail("timers did not deliver before the dump: periodic %d thread %d", periodic_n, thread_n);
    printf("READY %d worker=%d\n", getpid(), worker_tid);
    wait_usr1();

    struct itimerspec its;
    get("oneshot", oneshot, &its);
    long long passed = now_ns(CLOCK_MONOTONIC) - start;
    if (ns(&its.it_value) > ns(&first.it_value) || ns(&its.it_value) < ns(&first.it_value) - passed - 100000000LL || ns(&its.it_interval))
        fail("oneshot: %lld ns left of %lld, %lld ns later", ns(&its.it_value), ns(&first.it_value), passed);
    get("none", none, &its);
    if (ns(&its.it_interval) != 7000000000LL || ns(&its.it_value) <= 0 || ns(&its.it_value) > 1000000000000LL)
        fail("none: value %lld interval %lld", ns(&its.it_value), ns(&its.it_interval));
    get("cpu", cpu, &its);
    if (ns(&its.it_value) <= 90000000000LL || ns(&its.it_value) > 100000000000LL || ns(&its.it_interval))
        fail("cpu: value %lld interval %lld", ns(&its.it_value), ns(&its.it_interval));
    get("workercpu", workercpu, &its);
    if (ns(&its.it_value) <= 90000000000LL || ns(&its.it_value) > 100000000000LL)
        fail("workercpu: value %lld", ns(&its.it_value));
    get("periodic", periodic, &its);
    if (ns(&its.it_interval) != 200000000LL || ns(&its.it_value) <= 0 || ns(&its.it_value) > 200000000LL)
        fail("periodic: value %lld interval %lld", ns(&its.it_value), ns(&its.it_interval));
    get("thread", thread_t, &its);
    if (ns(&its.it_interval) != 300000000LL || ns(&its.it_value) <= 0 || ns(&its.it_value) > 300000000LL)
        fail("thread: value %lld interval %lld", ns(&its.it_value), ns(&its.it_interval));
    get("pending", pending, &its);
    if (ns(&its.it_value) || ns(&its.it_interval))
        fail("pending: armed again (value %lld interval %lld)", ns(&its.it_value), ns(&its.it_interval));
    if (timer_getoverrun(periodic) < 0 || timer_getoverrun(thread_t) < 0)
        fail("timer_getoverrun: %s", strerror(errno));

    int p0 = periodic_n, t0 = thread_n;
    if (!wait_count(&periodic_n, p0 + 3) || !wait_count(&thread_n, t0 + 2))
        fail("periodic timers stopped: periodic %d -> %d, thread %d -> %d", p0, periodic_n, t0, thread_n);
    if (periodic_bad || thread_bad)
        fail("wrong deliveries (periodic %d, thread %d): %s", periodic_bad, thread_bad, bad_why);
    if (quiet_n)
        fail("%d signals from timers that should not have fired", quiet_n);

    take_pending(pending, SIG_PENDING, 4444, 0);
    take_pending(blocked, SIG_BLOCKED, 5555, 1);
    worker_take = 1;
    if (!wait_count(&worker_take, 2))
        fail("the worker did not take its pending signal");
    struct timespec period_ts = { 0, 200000000 };
    siginfo_t si;
    sigset_t only;
    sigemptyset(&only);
    sigaddset(&only, SIG_BLOCKED);
    if (sigtimedwait(&only, &si, &period_ts) != SIG_BLOCKED || si.si_timerid != kernel_id(blocked))
        fail("the blocked periodic timer stopped after its signal was taken");

    timer_t fresh = make(CLOCK_MONOTONIC, SIGEV_NONE, 0, zero, 0);
    timer_t mine[] = { spare[2], periodic, thread_t, oneshot, none, cpu, workercpu, pending, blocked, tpending };
    for (size_t i = 0; i < sizeof mine / sizeof mine[0]; i++)
        if (kernel_id(mine[i]) == kernel_id(fresh))
            fail("a new timer got id %d, which is taken", kernel_id(fresh));
    get("spare", spare[2], &its);
    succeed();
}
