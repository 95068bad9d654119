/*
 * childstops: two stopped children; the parent has collected the stop of
 * one with waitpid(WUNTRACED) and not of the other. After the restore the
 * parent's waitpid must report the second's stop and not the first's again,
 * and the parent must get no SIGCHLD it did not get before.
 * Argument "ignore": the parent ignores SIGCHLD (SIG_IGN; no signal at all).
 * READY waiting=PID collected=PID
 */
#define _GNU_SOURCE
#include <sys/wait.h>
#include <unistd.h>
#include "workload.h"

static volatile sig_atomic_t sigchlds;

static void on_chld(int sig)
{
    (void)sig;
    sigchlds++;
}

static pid_t stopped_child(void)
{
    pid_t c = fork();
    if (c < 0)
        die("fork");
    if (c == 0) {
        raise(SIGSTOP);
        for (;;)
            pause();
    }
    for (;;) {
        char path[64], buf[512];
        snprintf(path, sizeof path, "/proc/%d/stat", c);
        FILE *f = fopen(path, "r");
        if (!f || !fgets(buf, sizeof buf, f))
            die("reading a child's stat");
        fclose(f);
        char *end = strrchr(buf, ')');
        if (end && end[2] == 'T')
            return c;
        sleep_ms(1);
    }
}

int main(int argc, char **argv)
{
    workload_init();
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = argc > 1 && strcmp(argv[1], "ignore") == 0 ? SIG_IGN : on_chld;
    sa.sa_flags = SA_RESTART;
    if (sigaction(SIGCHLD, &sa, NULL) != 0)
        die("sigaction");
    pid_t waiting = stopped_child();
    pid_t collected = stopped_child();
    int st;
    if (waitpid(collected, &st, WUNTRACED) != collected || !WIFSTOPPED(st))
        die("waitpid");
    sleep_ms(50); /* every SIGCHLD of the two stops has been handled */
    int before = sigchlds;
    printf("READY waiting=%d collected=%d sigchlds=%d\n", waiting, collected, before);
    while (!got_usr1)
        pause();
    int fail = 0;
    pid_t r = waitpid(collected, &st, WUNTRACED | WNOHANG);
    if (r != 0) {
        printf("FAIL the collected stop of %d was reported again (%d)\n", collected, r);
        fail = 1;
    }
    r = waitpid(waiting, &st, WUNTRACED | WNOHANG);
    if (r != waiting || !WIFSTOPPED(st)) {
        printf("FAIL the stop of %d was not reported (%d)\n", waiting, r);
        fail = 1;
    }
    if (sigchlds != before) {
        printf("FAIL %d SIGCHLD more than before the dump\n", sigchlds - before);
        fail = 1;
    }
    kill(waiting, SIGKILL);
    kill(collected, SIGKILL);
    waitpid(waiting, &st, 0);
    waitpid(collected, &st, 0);
    if (fail)
        return 1;
    printf("OK\n");
    return 0;
}
