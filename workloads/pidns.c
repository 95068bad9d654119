/*
 * pidns [t][c]: a tree whose root is pid 1 of a pid namespace of its own.
 *
 * The process started (the outer one) unshares a pid namespace ("t": also a
 * time namespace, its monotonic clock 100000 s ahead of the host's), forks
 * the namespace's init, prints "ROOT <its pid here>" and waits for it,
 * exiting as it does. The init ("c": in a cgroup namespace it makes first)
 * makes a session of its own, forks a child that makes a process group of
 * its own and sleeps, and a child that exits at once with status 7 and is
 * left a zombie, and a child that stops itself (SIGSTOP), whose stop it
 * collects with waitpid(WUNTRACED); then two threads print "t<i> <counter>" every 100 ms (as
 * test_mm), the first also "mono <ms>" (CLOCK_MONOTONIC) after each count.
 * It prints "READY pid=<getpid> child=<pid> zombie=<pid> stopped=<pid>".
 *
 * "x PROGRAM ARGS...": the init execs PROGRAM (another workload) instead.
 *
 * On SIGUSR1 (to the init): checks it is pid 1 with parent 0, the leader of
 * session 1, that the child is alive in its own group and the zombie still
 * a zombie with status 7, the stopped child's stop not reported again; prints "OK" (exit 0) or "FAIL <reason>" (exit 1).
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "workload.h"

static volatile long counters[3];

static long mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void *worker(void *arg)
{
    int id = (int)(long)arg;
    for (;;) {
        printf("t%d %ld\n", id, counters[id]);
        if (id == 1)
            printf("mono %ld\n", mono_ms());
        counters[id]++;
        sleep_ms_full(100);
    }
    return NULL;
}

static int init(int cgroup_ns)
{
    if (cgroup_ns && unshare(CLONE_NEWCGROUP) != 0)
        die("unshare(CLONE_NEWCGROUP)");
    if (setsid() < 0)
        die("setsid");
    pid_t child = fork();
    if (child < 0)
        die("fork");
    if (child == 0) {
        setpgid(0, 0);
        for (;;)
            pause();
    }
    setpgid(child, child);
    pid_t zombie = fork();
    if (zombie < 0)
        die("fork");
    if (zombie == 0)
        _exit(7);
    siginfo_t si;
    memset(&si, 0, sizeof si);
    /* Wait until it is a zombie, leaving it one. */
    if (waitid(P_PID, zombie, &si, WEXITED | WNOWAIT) != 0)
        die("waitid");
    pid_t stopped = fork();
    if (stopped < 0)
        die("fork");
    if (stopped == 0) {
        raise(SIGSTOP);
        _exit(0);
    }
    int st;
    if (waitpid(stopped, &st, WUNTRACED) != stopped || !WIFSTOPPED(st))
        die("waitpid(WUNTRACED)");
    printf("READY pid=%d child=%d zombie=%d stopped=%d\n", (int)getpid(), (int)child, (int)zombie, (int)stopped);
    pthread_t th[2];
    for (long i = 1; i <= 2; i++)
        if (pthread_create(&th[i - 1], NULL, worker, (void *)i) != 0)
            die("pthread_create");
    while (!got_usr1)
        sleep_ms_full(20);
    if (getpid() != 1 || getppid() != 0)
        fail("pid %d ppid %d, not 1 and 0", (int)getpid(), (int)getppid());
    if (getsid(0) != 1)
        fail("session %d, not 1", (int)getsid(0));
    if (kill(child, 0) != 0 || getpgid(child) != child)
        fail("child %d: alive %d, group %d", (int)child, kill(child, 0) == 0, (int)getpgid(child));
    memset(&si, 0, sizeof si);
    if (waitid(P_PID, zombie, &si, WEXITED | WNOHANG | WNOWAIT) != 0 || si.si_pid != zombie || si.si_status != 7)
        fail("zombie %d: si_pid %d status %d", (int)zombie, (int)si.si_pid, si.si_status);
    if (waitpid(stopped, &st, WUNTRACED | WNOHANG) != 0)
        fail("the collected stop of %d was reported again", (int)stopped);
    succeed();
}

int main(int argc, char **argv)
{
    const char *opts = argc > 1 ? argv[1] : "";
    workload_init();
    int flags = CLONE_NEWPID | (strchr(opts, 't') ? CLONE_NEWTIME : 0);
    if (unshare(flags) != 0)
        die("unshare");
    if (flags & CLONE_NEWTIME) {
        FILE *f = fopen("/proc/self/timens_offsets", "w");
        if (!f || fprintf(f, "monotonic 100000 0\n") < 0 || fclose(f) != 0)
            die("timens_offsets");
    }
    pid_t root = fork();
    if (root < 0)
        die("fork");
    if (root == 0 && opts[0] == 'x' && argc > 2) {
        if (setsid() < 0)
            die("setsid");
        execv(argv[2], argv + 2);
        die("execv");
    }
    if (root == 0)
        return init(strchr(opts, 'c') != NULL);
    printf("ROOT %d\n", (int)root);
    int status;
    if (waitpid(root, &status, 0) != root)
        die("waitpid");
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}
