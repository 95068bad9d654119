/*
 * secstate: the security state of a container, set on itself by a process
 * of three threads, which checks it after a restore.
 *
 * - capabilities: CAP_SYS_BOOT dropped from the bounding set, CAP_NET_RAW
 *   from the permitted set, CAP_CHOWN from the effective set (and in thread
 *   A only CAP_DAC_OVERRIDE too), CAP_KILL and CAP_NET_BIND_SERVICE
 *   inheritable, CAP_NET_BIND_SERVICE ambient;
 * - securebits SECBIT_KEEP_CAPS | SECBIT_NO_CAP_AMBIENT_RAISE, no_new_privs;
 * - seccomp: filter 1, installed with TSYNC so that all three threads share
 *   it, makes getppid and getsid fail with EPERM and kills the process on
 *   munmap (a syscall crust runs late in a restore); filter 2, thread B's
 *   own, with SECCOMP_FILTER_FLAG_LOG, makes getsid fail with EACCES
 *   instead (the newest filter's errno wins: the order shows), and capset
 *   and prctl(PR_SET_SECUREBITS) with EPERM (crust runs both after the
 *   filters are back).
 *
 * Prints "READY <pid>"; on SIGUSR1 every thread reads its state again and
 * compares it with what it read before, and checks that the filters act;
 * then "OK" or "FAIL <what>".
 */
#define _GNU_SOURCE
#include <linux/audit.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "workload.h"

#ifndef SECBIT_KEEP_CAPS
#define SECBIT_KEEP_CAPS (1 << 4)
#endif
#define SECBIT_NO_CAP_AMBIENT_RAISE_BIT (1 << 6)
#define SECBITS (SECBIT_KEEP_CAPS | SECBIT_NO_CAP_AMBIENT_RAISE_BIT)

struct caps {
    uint64_t eff, prm, inh;
};

/* What a thread reads of its own security state. */
struct state {
    struct caps caps;
    uint64_t bounding, ambient;
    long secbits, nnp, seccomp;
};

static struct caps get_caps(void)
{
    struct __user_cap_header_struct h = { _LINUX_CAPABILITY_VERSION_3, 0 };
    struct __user_cap_data_struct d[2];
    if (syscall(SYS_capget, &h, d))
        die("capget");
    struct caps c = {
        d[0].effective | (uint64_t)d[1].effective << 32,
        d[0].permitted | (uint64_t)d[1].permitted << 32,
        d[0].inheritable | (uint64_t)d[1].inheritable << 32,
    };
    return c;
}

static long set_caps(struct caps c)
{
    struct __user_cap_header_struct h = { _LINUX_CAPABILITY_VERSION_3, 0 };
    struct __user_cap_data_struct d[2] = {
        { (uint32_t)c.eff, (uint32_t)c.prm, (uint32_t)c.inh },
        { (uint32_t)(c.eff >> 32), (uint32_t)(c.prm >> 32), (uint32_t)(c.inh >> 32) },
    };
    return syscall(SYS_capset, &h, d);
}

static struct state read_state(void)
{
    struct state s = { get_caps(), 0, 0, 0, 0, 0 };
    for (int cap = 0; cap < 64; cap++) {
        if (prctl(PR_CAPBSET_READ, cap, 0, 0, 0) == 1)
            s.bounding |= 1ULL << cap;
        if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_IS_SET, cap, 0, 0) == 1)
            s.ambient |= 1ULL << cap;
    }
    s.secbits = prctl(PR_GET_SECUREBITS, 0, 0, 0, 0);
    s.nnp = prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0);
    s.seccomp = prctl(PR_GET_SECCOMP, 0, 0, 0, 0);
    return s;
}

static long install(struct sock_filter *insns, unsigned short n, unsigned int flags)
{
    struct sock_fprog prog = { n, insns };
    return syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &prog);
}

#define NR offsetof(struct seccomp_data, nr)
#define ARG0 offsetof(struct seccomp_data, args[0])

static struct sock_filter shared_filter[] = {
    BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
    BPF_STMT(BPF_LD | BPF_W | BPF_ABS, NR),
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_getppid, 0, 1),
    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_getsid, 0, 1),
    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_munmap, 0, 1),
    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
};

static struct sock_filter own_filter[] = {
    BPF_STMT(BPF_LD | BPF_W | BPF_ABS, NR),
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_getsid, 0, 1),
    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EACCES),
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_capset, 0, 1),
    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_prctl, 0, 3),
    BPF_STMT(BPF_LD | BPF_W | BPF_ABS, ARG0),
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, PR_SET_SECUREBITS, 0, 1),
    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
};

/* Thread 0 is the main thread, 1 is A, 2 is B. */
static struct state before[3];
static volatile int step;          /* 1: shared filter in; 2: B's in; 3: check */
static volatile int done[3];
static char result[3][200];

static void report(int t, const char *fmt, const char *what, long a, long b)
{
    if (!result[t][0])
        snprintf(result[t], sizeof result[t], fmt, t, what, a, b);
}

/* Reads the state again and compares; checks what the filters do. */
static void check(int t)
{
    struct state now = read_state();
    const char *f = "thread %d: %s is %#lx, was %#lx";
    if (now.caps.eff != before[t].caps.eff)
        report(t, f, "CapEff", now.caps.eff, before[t].caps.eff);
    if (now.caps.prm != before[t].caps.prm)
        report(t, f, "CapPrm", now.caps.prm, before[t].caps.prm);
    if (now.caps.inh != before[t].caps.inh)
        report(t, f, "CapInh", now.caps.inh, before[t].caps.inh);
    if (now.bounding != before[t].bounding)
        report(t, f, "the bounding set", now.bounding, before[t].bounding);
    if (now.ambient != before[t].ambient)
        report(t, f, "the ambient set", now.ambient, before[t].ambient);
    if (now.secbits != before[t].secbits)
        report(t, f, "securebits", now.secbits, before[t].secbits);
    if (now.nnp != before[t].nnp)
        report(t, f, "no_new_privs", now.nnp, before[t].nnp);
    if (now.seccomp != 2)
        report(t, f, "the seccomp mode", now.seccomp, 2);
    errno = 0;
    long r = syscall(SYS_getppid);
    if (r != -1 || errno != EPERM)
        report(t, "thread %d: %s gave %ld errno %ld, not EPERM", "getppid", r, errno);
    /* Both filters fail getsid, with different errnos: the newest filter's
     * wins, so this tells whether they are in their order. */
    errno = 0;
    r = syscall(SYS_getsid, 0);
    if (r != -1 || errno != (t == 2 ? EACCES : EPERM))
        report(t, "thread %d: %s gave %ld errno %ld", "getsid", r, errno);
    errno = 0;
    r = set_caps(now.caps);
    if (t == 2 ? r != -1 || errno != EPERM : r != 0)
        report(t, "thread %d: %s gave %ld errno %ld", "capset", r, errno);
    errno = 0;
    r = prctl(PR_SET_SECUREBITS, now.secbits, 0, 0, 0);
    if (t == 2 ? r != -1 || errno != EPERM : r != 0)
        report(t, "thread %d: %s gave %ld errno %ld", "prctl(PR_SET_SECUREBITS)", r, errno);
    done[t] = 1;
}

static void *thread_main(void *arg)
{
    int t = (int)(long)arg;
    while (step < 1)
        sleep_ms(5);
    if (t == 1) {
        struct caps c = get_caps();
        c.eff &= ~(1ULL << CAP_DAC_OVERRIDE);
        if (set_caps(c))
            die("thread A: capset");
    } else if (install(own_filter, sizeof own_filter / sizeof own_filter[0], SECCOMP_FILTER_FLAG_LOG)) {
        die("thread B: seccomp");
    }
    before[t] = read_state();
    done[t] = 1;
    while (step < 3)
        sleep_ms(5);
    check(t);
    for (;;)
        sleep_ms(1000);
}

int main(void)
{
    workload_init();
    if (prctl(PR_CAPBSET_DROP, CAP_SYS_BOOT, 0, 0, 0))
        die("PR_CAPBSET_DROP");
    struct caps c = get_caps();
    c.prm &= ~(1ULL << CAP_NET_RAW);
    c.eff &= c.prm;
    c.inh = 1ULL << CAP_KILL | 1ULL << CAP_NET_BIND_SERVICE;
    if (set_caps(c))
        die("capset");
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_NET_BIND_SERVICE, 0, 0))
        die("PR_CAP_AMBIENT_RAISE");
    if (prctl(PR_SET_SECUREBITS, SECBITS, 0, 0, 0))
        die("PR_SET_SECUREBITS");
    c.eff &= ~(1ULL << CAP_CHOWN);
    if (set_caps(c))
        die("capset");
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
        die("PR_SET_NO_NEW_PRIVS");
    pthread_t th;
    for (long t = 1; t <= 2; t++)
        if (pthread_create(&th, NULL, thread_main, (void *)t))
            die("pthread_create");
    /* The threads exist: TSYNC gives them this very filter. */
    if (install(shared_filter, sizeof shared_filter / sizeof shared_filter[0], SECCOMP_FILTER_FLAG_TSYNC))
        die("seccomp with TSYNC");
    step = 1;
    while (!done[1] || !done[2])
        sleep_ms(5);
    before[0] = read_state();
    done[1] = done[2] = 0;
    printf("READY %d\n", (int)getpid());
    wait_usr1();
    step = 3;
    check(0);
    while (!done[1] || !done[2])
        sleep_ms(5);
    for (int t = 0; t < 3; t++)
        if (result[t][0])
            fail("%s", result[t]);
    succeed();
}
