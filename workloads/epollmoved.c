/*
 * epollmoved: an epoll whose targets are no longer at the fd they were
 * added under: a pipe's read end added as fd P (data 0x11), dup'd, then fd P
 * closed; an eventfd added as fd X (data 0x22), dup'd, fd X closed and taken
 * by another eventfd (holding 7), which the epoll does not watch.
 * (P and X are one number here: the eventfd takes the pipe's.)
 * Prints "READY <pid> pipe=P eventfd=X". After SIGUSR1 it checks that the
 * epoll still shows its targets under P and X (fdinfo), that fd X is still the other eventfd,
 * and that both targets report through their dups. Prints "OK" or "FAIL ...".
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "workload.h"

/* The "tfd: N events: E data: D" part of each target line of fdinfo. */
static void targets(int fd, char *out, size_t len)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/self/fdinfo/%d", fd);
    FILE *f = fopen(path, "r");
    if (!f)
        die("fdinfo");
    out[0] = 0;
    while (fgets(buf, sizeof buf, f)) {
        if (strncmp(buf, "tfd:", 4) != 0)
            continue;
        char *pos = strstr(buf, " pos:");
        if (pos)
            *pos = 0;
        strncat(out, buf, len - strlen(out) - 2);
        strcat(out, ";");
    }
    fclose(f);
}

/* The data of the one event ready within 2 s, or 0. */
static uint64_t event(int e)
{
    struct epoll_event ev;
    if (epoll_wait(e, &ev, 1, 2000) != 1)
        return 0;
    return ev.data.u64;
}

int main(void)
{
    workload_init();
    int e = epoll_create1(EPOLL_CLOEXEC);
    int p[2];
    if (e < 0 || pipe(p))
        die("epoll/pipe");
    struct epoll_event ev = { .events = EPOLLIN, .data.u64 = 0x11 };
    if (epoll_ctl(e, EPOLL_CTL_ADD, p[0], &ev))
        die("epoll_ctl pipe");
    int pipe_dup = dup(p[0]);
    int pipe_fd = p[0];
    close(p[0]);
    int a = eventfd(0, 0);
    ev.data.u64 = 0x22;
    if (a < 0 || epoll_ctl(e, EPOLL_CTL_ADD, a, &ev))
        die("epoll_ctl eventfd");
    int a_dup = dup(a);
    close(a);
    int b = eventfd(7, EFD_CLOEXEC);
    if (b != a || pipe_dup < 0 || a_dup < 0)
        die("fd numbers");
    char before[2048], after[2048];
    targets(e, before, sizeof before);
    printf("READY %d pipe=%d eventfd=%d\n", (int)getpid(), pipe_fd, a);
    wait_usr1();
    targets(e, after, sizeof after);
    /* The same lines, in any order: fdinfo lists targets in the order of
     * their files' kernel addresses. */
    int same = strlen(before) == strlen(after);
    char copy[2048];
    snprintf(copy, sizeof copy, "%s", before);
    for (char *save, *l = strtok_r(copy, ";", &save); l && same; l = strtok_r(NULL, ";", &save))
        same = strstr(after, l) != NULL;
    if (!same)
        fail("targets were %s and are %s", before, after);
    uint64_t v = 0;
    if (!(fcntl(b, F_GETFD) & FD_CLOEXEC) || read(b, &v, 8) != 8 || v != 7)
        fail("fd %d is not the other eventfd (value %llu)", b, (unsigned long long)v);
    if (event(e) != 0)
        fail("an event before any was made");
    if (write(p[1], "x", 1) != 1)
        die("write");
    if ((v = event(e)) != 0x11)
        fail("the pipe's event has data %#llx", (unsigned long long)v);
    char c;
    if (read(pipe_dup, &c, 1) != 1)
        die("read");
    v = 1;
    if (write(a_dup, &v, 8) != 8)
        die("write eventfd");
    if ((v = event(e)) != 0x22)
        fail("the eventfd's event has data %#llx", (unsigned long long)v);
    succeed();
}
