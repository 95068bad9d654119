/*
 * attrs: a process with attributes set on itself, which checks them after a
 * restore: the child-subreaper flag, oom_score_adj 500, a nice value and a
 * scheduling policy.
 *
 *   attrs batch|idle|fifo|rr|other
 *
 * Prints "READY <pid>"; on SIGUSR1 checks every attribute and prints "OK",
 * or "FAIL <what>".
 */
#define _GNU_SOURCE
#include <sched.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <unistd.h>

#include "workload.h"

static int oom_score_adj(void)
{
    FILE *f = fopen("/proc/self/oom_score_adj", "r");
    int v = -12345;
    if (!f || fscanf(f, "%d", &v) != 1)
        die("oom_score_adj");
    fclose(f);
    return v;
}

int main(int argc, char **argv)
{
    workload_init();
    if (argc != 2) {
        fprintf(stderr, "usage: attrs batch|idle|fifo|rr|other\n");
        return 2;
    }
    int policy = !strcmp(argv[1], "batch") ? SCHED_BATCH
               : !strcmp(argv[1], "idle") ? SCHED_IDLE
               : !strcmp(argv[1], "fifo") ? SCHED_FIFO
               : !strcmp(argv[1], "rr") ? SCHED_RR : SCHED_OTHER;
    int prio = policy == SCHED_FIFO || policy == SCHED_RR ? 7 : 0;
    struct sched_param sp = { .sched_priority = prio };
    FILE *f = fopen("/proc/self/oom_score_adj", "w");
    if (!f || fprintf(f, "500\n") < 0 || fclose(f))
        die("writing oom_score_adj");
    if (prctl(PR_SET_CHILD_SUBREAPER, 1) || setpriority(PRIO_PROCESS, 0, 5) || sched_setscheduler(0, policy, &sp))
        die("setting attributes");
    printf("READY %d\n", (int)getpid());
    wait_usr1();
    int sub = 0;
    if (prctl(PR_GET_CHILD_SUBREAPER, &sub) || !sub)
        fail("the child-subreaper flag is gone");
    if (oom_score_adj() != 500)
        fail("oom_score_adj is %d, not 500", oom_score_adj());
    errno = 0;
    int nice = getpriority(PRIO_PROCESS, 0);
    if (nice != 5)
        fail("nice is %d, not 5", nice);
    struct sched_param got = { 0 };
    if (sched_getscheduler(0) != policy || sched_getparam(0, &got) || got.sched_priority != prio)
        fail("scheduling policy %d priority %d, not %d %d", sched_getscheduler(0), got.sched_priority, policy, prio);
    succeed();
}
