/* A parent that is a child subreaper, with a grandchild re-parented to it
 * (its own child exited) and three zombies it has not reaped: one exited with
 * status 7 (leading a process group), one killed by SIGTERM (in that group),
 * one by SIGKILL (leading another group).  On SIGUSR1 it checks that the
 * grandchild is still its child and that the zombies kept their groups and
 * give their statuses. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>
#include <signal.h>
#include "workload.h"

static pid_t parent_of(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    int ppid = -1;
    if (fscanf(f, "%*d %*s %*c %d", &ppid) != 1)
        ppid = -1;
    fclose(f);
    return ppid;
}

int main(void)
{
    workload_init();
    if (prctl(PR_SET_CHILD_SUBREAPER, 1) != 0)
        die("PR_SET_CHILD_SUBREAPER");

    int link[2];
    if (pipe(link) != 0)
        die("pipe");
    pid_t middle = fork();
    if (middle == 0) {
        pid_t grandchild = fork();
        if (grandchild == 0) {
            close(link[0]);
            close(link[1]);
            for (;;)
                pause();
        }
        if (write(link[1], &grandchild, sizeof grandchild) != sizeof grandchild)
            _exit(1);
        _exit(0);
    }
    pid_t grandchild;
    if (read(link[0], &grandchild, sizeof grandchild) != sizeof grandchild)
        die("read");
    if (waitpid(middle, NULL, 0) != middle)
        die("waitpid");
    while (parent_of(grandchild) != getpid())
        sleep_ms(5);

    /* exited leads a process group of its own, which killed joins after
     * exited died; slain leads another. */
    siginfo_t si;
    pid_t exited = fork();
    if (exited == 0) {
        setpgid(0, 0);
        _exit(7);
    }
    if (waitid(P_PID, exited, &si, WEXITED | WNOWAIT) != 0)
        die("waitid");
    pid_t killed = fork();
    if (killed == 0) {
        if (setpgid(0, exited) != 0)
            _exit(1);
        for (;;)
            pause();
    }
    while (getpgid(killed) != exited)
        sleep_ms(1);
    kill(killed, SIGTERM);
    pid_t slain = fork();
    if (slain == 0) {
        setpgid(0, 0);
        for (;;)
            pause();
    }
    while (getpgid(slain) != slain)
        sleep_ms(1);
    kill(slain, SIGKILL);
    /* Wait until all are zombies, without reaping them. */
    pid_t zombies[] = { exited, killed, slain };
    for (int i = 0; i < 3; i++) {
        si.si_pid = 0;
        if (waitid(P_PID, zombies[i], &si, WEXITED | WNOWAIT) != 0)
            die("waitid");
    }
    printf("READY grandchild=%d exited=%d killed=%d slain=%d\n", (int)grandchild, (int)exited, (int)killed, (int)slain);

    wait_usr1();
    if (parent_of(grandchild) != getpid())
        fail("grandchild %d has parent %d", (int)grandchild, (int)parent_of(grandchild));
    if (getpgid(exited) != exited || getpgid(killed) != exited || getpgid(slain) != slain)
        fail("zombies' process groups: %d %d %d", (int)getpgid(exited), (int)getpgid(killed), (int)getpgid(slain));
    int status;
    if (waitpid(exited, &status, WNOHANG) != exited || !WIFEXITED(status) || WEXITSTATUS(status) != 7)
        fail("zombie %d: status %#x", (int)exited, status);
    if (waitpid(killed, &status, WNOHANG) != killed || !WIFSIGNALED(status) || WTERMSIG(status) != SIGTERM)
        fail("zombie %d: status %#x", (int)killed, status);
    if (waitpid(slain, &status, WNOHANG) != slain || !WIFSIGNALED(status) || WTERMSIG(status) != SIGKILL)
        fail("zombie %d: status %#x", (int)slain, status);
    kill(grandchild, SIGKILL);
    waitpid(grandchild, NULL, 0);
    succeed();
}
