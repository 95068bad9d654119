/*
 * ptys: a server holding a pty master (packet mode on, window size 33x101,
 * an unusual VERASE and no ECHOCTL), with a "shell" child on the slave: the
 * shell leads a session of its own with the slave as its controlling
 * terminal and its stdin, stdout and stderr, and starts a "job" in a process
 * group of its own, which it makes the terminal's foreground group. The job
 * answers each line it reads with "got LINE". One round trip is made before
 * READY, so nothing is queued in either direction.
 *
 * Refusal modes, each then waiting for SIGUSR1 to print "OK":
 *   ptys alone   holds a master whose slave was opened and closed (no holder)
 *   ptys output  left the job's answer to a second line unread on the master
 *   ptys typed   typed a line (echo off) that the job, told to stop reading,
 *                has not read
 *   ptys locked  holds a master it locked again after the shell opened the slave
 *
 * Prints "READY <pid> shell=<pid> job=<pid> index=<n>". After SIGUSR1 the
 * server checks, through its master: termios, window size, packet mode, the
 * pty's number, its session (the shell) and foreground group (the job); then
 * writes "ping" and expects the terminal's echo, then the job's answer.
 * Prints "OK" or "FAIL ...".
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include "workload.h"

static int stop_reading;

static void job(void)
{
    if (stop_reading)
        for (;;)
            pause();
    char line[256];
    size_t n = 0;
    for (;;) {
        ssize_t r = read(0, line + n, sizeof line - n - 1);
        if (r <= 0)
            _exit(0);
        n += r;
        line[n] = 0;
        char *nl;
        while ((nl = strchr(line, '\n'))) {
            *nl = 0;
            dprintf(1, "got %s\n", line);
            memmove(line, nl + 1, strlen(nl + 1) + 1);
            n = strlen(line);
        }
    }
}

/* The shell: session leader on the slave, the job in the foreground. */
static void shell(const char *slave, int master, int report)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    close(master);
    if (setsid() < 0)
        die("setsid");
    int fd = open(slave, O_RDWR); /* becomes the controlling terminal */
    if (fd < 0)
        die(slave);
    for (int i = 0; i < 3; i++)
        dup2(fd, i);
    close(fd);
    pid_t j = fork();
    if (j < 0)
        die("fork");
    if (j == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        setpgid(0, 0);
        close(report);
        job();
    }
    setpgid(j, j);
    if (tcsetpgrp(0, j) != 0)
        die("tcsetpgrp");
    if (write(report, &j, sizeof j) != sizeof j)
        die("report");
    close(report);
    for (;;)
        pause();
}

static char seen[8192];
static size_t seen_len;

/* Reads the master (packet mode: a status byte before the data of each
 * read) until `want` has arrived; fails after 5 s. */
static void expect(int master, const char *want)
{
    for (;;) {
        if (memmem(seen, seen_len, want, strlen(want))) {
            seen_len = 0;
            return;
        }
        struct pollfd p = { master, POLLIN, 0 };
        if (poll(&p, 1, 5000) != 1)
            fail("no %s from the pty (got %.*s)", want, (int)seen_len, seen);
        char buf[1024];
        ssize_t r = read(master, buf, sizeof buf);
        if (r <= 0)
            fail("read of the master: %zd %s", r, strerror(errno));
        if (buf[0] != TIOCPKT_DATA)
            continue;
        if (seen_len + r > sizeof seen)
            fail("too much from the pty");
        memcpy(seen + seen_len, buf + 1, r - 1);
        seen_len += r - 1;
    }
}

static void say(int master, const char *line)
{
    if (write(master, line, strlen(line)) != (ssize_t)strlen(line))
        die("write to the master");
}

int main(int argc, char **argv)
{
    workload_init();
    const char *mode = argc > 1 ? argv[1] : "";
    stop_reading = strcmp(mode, "typed") == 0;
    int master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (master < 0 || grantpt(master) || unlockpt(master))
        die("posix_openpt");
    char slave[64];
    if (ptsname_r(master, slave, sizeof slave))
        die("ptsname");
    int index;
    if (ioctl(master, TIOCGPTN, &index))
        die("TIOCGPTN");
    struct termios t;
    if (tcgetattr(master, &t))
        die("tcgetattr");
    t.c_cc[VERASE] = 8;
    t.c_lflag &= ~ECHOCTL;
    if (stop_reading)
        t.c_lflag &= ~ECHO;
    if (tcsetattr(master, TCSANOW, &t))
        die("tcsetattr");
    struct winsize ws = { 33, 101, 0, 0 };
    int one = 1;
    if (ioctl(master, TIOCSWINSZ, &ws) || ioctl(master, TIOCPKT, &one))
        die("winsize/packet");
    if (strcmp(mode, "alone") == 0) {
        int s = open(slave, O_RDWR | O_NOCTTY);
        if (s < 0)
            die(slave);
        close(s);
        printf("READY %d index=%d\n", (int)getpid(), index);
        wait_usr1();
        succeed();
    }
    int report[2];
    if (pipe(report))
        die("pipe");
    pid_t sh = fork();
    if (sh < 0)
        die("fork");
    if (sh == 0) {
        close(report[0]);
        shell(slave, master, report[1]);
    }
    close(report[1]);
    pid_t j;
    if (read(report[0], &j, sizeof j) != sizeof j)
        die("the shell did not start its job");
    close(report[0]);
    if (stop_reading) {
        say(master, "typed\n");
    } else {
        say(master, "hello\n");
        expect(master, "hello\r\ngot hello\r\n");
    }
    if (strcmp(mode, "output") == 0) {
        say(master, "unread\n");
        sleep_ms(200);
    }
    if (strcmp(mode, "locked") == 0 && ioctl(master, TIOCSPTLCK, &one))
        die("TIOCSPTLCK");
    if (*mode) {
        printf("READY %d shell=%d job=%d index=%d\n", (int)getpid(), (int)sh, (int)j, index);
        wait_usr1();
        succeed();
    }
    struct termios before;
    tcgetattr(master, &before);
    printf("READY %d shell=%d job=%d index=%d\n", (int)getpid(), (int)sh, (int)j, index);
    wait_usr1();

    struct termios now;
    if (tcgetattr(master, &now))
        fail("tcgetattr: %s", strerror(errno));
    if (now.c_iflag != before.c_iflag || now.c_oflag != before.c_oflag || now.c_cflag != before.c_cflag
        || now.c_lflag != before.c_lflag || memcmp(now.c_cc, before.c_cc, sizeof now.c_cc) != 0)
        fail("termios lflag %#x erase %d, was %#x %d", now.c_lflag, now.c_cc[VERASE], before.c_lflag, before.c_cc[VERASE]);
    struct winsize w;
    if (ioctl(master, TIOCGWINSZ, &w) || w.ws_row != 33 || w.ws_col != 101)
        fail("window size %dx%d", w.ws_row, w.ws_col);
    int pkt = 0, idx = -1;
    if (ioctl(master, TIOCGPKT, &pkt) || !pkt)
        fail("packet mode is off");
    if (ioctl(master, TIOCGPTN, &idx) || idx != index)
        fail("pty %d, was %d", idx, index);
    pid_t sid = -1, fg = -1;
    if (ioctl(master, TIOCGSID, &sid) || sid != sh)
        fail("the pty's session is %d, not the shell's %d (%s)", sid, sh, strerror(errno));
    if (ioctl(master, TIOCGPGRP, &fg) || fg != j)
        fail("the pty's foreground group is %d, not the job's %d", fg, j);
    if (!(fcntl(master, F_GETFD) & FD_CLOEXEC))
        fail("the master lost FD_CLOEXEC");
    say(master, "ping\n");
    expect(master, "ping\r\ngot ping\r\n");
    succeed();
}
