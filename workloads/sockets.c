/*
 * sockets: unix socket pairs, to check they come back connected, with what
 * was queued in them.
 *
 *   S: stream pair: "hello" queued for s[0] (non-blocking), 200000 pattern
 *      bytes queued for s[1]
 *   Q: seqpacket pair, nothing queued
 *   D: datagram pair, nothing queued
 *   C: stream pair split by a fork: the parent holds c[0], the child c[1];
 *      "from child" is queued for the parent, "for child" for the child
 *   options: s[0] SO_SNDBUF 1 MiB, s[1] SO_PRIORITY 5, q[0] SO_RCVTIMEO
 *      3 s, d[0] SO_PASSCRED; no peek offset anywhere
 *
 * Prints "READY <pid> child=<pid>". On SIGUSR1 the parent reads and checks
 * every queue, sends through every pair, wakes the child (SIGUSR1), which
 * reads its queue and answers "ok" if it is right; prints "OK" or "FAIL".
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "workload.h"

#define BIG 200000

static unsigned char pattern(size_t i)
{
    return (unsigned char)(i * 7 + i / 251);
}

/* Reads exactly n bytes (blocking fd). */
static int read_all(int fd, void *buf, size_t n)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, (char *)buf + got, n - got);
        if (r <= 0)
            return -1;
        got += (size_t)r;
    }
    return 0;
}

int main(void)
{
    workload_init();
    int s[2], q[2], d[2], c[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, s) || socketpair(AF_UNIX, SOCK_SEQPACKET, 0, q) ||
        socketpair(AF_UNIX, SOCK_DGRAM, 0, d) || socketpair(AF_UNIX, SOCK_STREAM, 0, c))
        die("socketpair");
    pid_t child = fork();
    if (child < 0)
        die("fork");
    if (child == 0) {
        close(s[0]), close(s[1]), close(q[0]), close(q[1]), close(d[0]), close(d[1]), close(c[0]);
        if (write(c[1], "from child", 10) != 10)
            die("child write");
        wait_usr1();
        char buf[9];
        if (read_all(c[1], buf, 9) == 0 && memcmp(buf, "for child", 9) == 0)
            (void)!write(c[1], "ok", 2);
        else
            (void)!write(c[1], "no", 2);
        _exit(0);
    }
    close(c[1]);
    if (write(c[0], "for child", 9) != 9 || write(s[1], "hello", 5) != 5)
        die("write");
    static unsigned char big[BIG];
    for (size_t i = 0; i < BIG; i++)
        big[i] = pattern(i);
    int sz = 1 << 20;
    setsockopt(s[0], SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz);
    if (write(s[0], big, BIG) != BIG)
        die("write big");
    fcntl(s[0], F_SETFL, O_NONBLOCK);
    struct timeval three = { 3, 0 };
    int one = 1, prio = 5, sndbuf_before = 0;
    socklen_t len = sizeof sndbuf_before;
    if (setsockopt(q[0], SOL_SOCKET, SO_RCVTIMEO, &three, sizeof three) ||
        setsockopt(d[0], SOL_SOCKET, SO_PASSCRED, &one, sizeof one) ||
        setsockopt(s[1], SOL_SOCKET, SO_PRIORITY, &prio, sizeof prio) ||
        getsockopt(s[0], SOL_SOCKET, SO_SNDBUF, &sndbuf_before, &len))
        die("setsockopt");
    /* The child has closed what it does not use and written its message. */
    int queued = 0;
    while (ioctl(c[0], FIONREAD, &queued) == 0 && queued < 10)
        sleep_ms(1);
    printf("READY %d child=%d\n", (int)getpid(), (int)child);
    wait_usr1();

    int v = 0;
    struct timeval tv;
    len = sizeof v;
    if (getsockopt(s[0], SOL_SOCKET, SO_SNDBUF, &v, &len) || v != sndbuf_before)
        fail("s[0] has SO_SNDBUF %d, not %d", v, sndbuf_before);
    len = sizeof v;
    if (getsockopt(s[1], SOL_SOCKET, SO_PRIORITY, &v, &len) || v != 5)
        fail("s[1] has SO_PRIORITY %d, not 5", v);
    len = sizeof v;
    if (getsockopt(d[0], SOL_SOCKET, SO_PASSCRED, &v, &len) || v != 1)
        fail("d[0] lost SO_PASSCRED");
    len = sizeof tv;
    if (getsockopt(q[0], SOL_SOCKET, SO_RCVTIMEO, &tv, &len) || tv.tv_sec != 3 || tv.tv_usec != 0)
        fail("q[0] lost its receive timeout");
    for (int i = 0; i < 2; i++) {
        len = sizeof v;
        if (getsockopt(s[i], SOL_SOCKET, SO_PEEK_OFF, &v, &len) || v != -1)
            fail("s[%d] has a peek offset %d", i, v);
    }

    char buf[16];
    if (read(s[0], buf, sizeof buf) != 5 || memcmp(buf, "hello", 5) != 0)
        fail("s[0] did not read its queued hello");
    if (read(s[0], buf, 1) != -1 || errno != EAGAIN)
        fail("s[0] is not non-blocking and empty");
    static unsigned char got[BIG];
    if (read_all(s[1], got, BIG) != 0)
        fail("s[1] lost queued bytes");
    for (size_t i = 0; i < BIG; i++)
        if (got[i] != pattern(i))
            fail("s[1] byte %zu differs", i);
    if (write(s[0], "x", 1) != 1 || read(s[1], buf, 1) != 1 || buf[0] != 'x')
        fail("s does not carry new bytes");
    if (send(q[0], "rec1", 4, 0) != 4 || send(q[0], "rec22", 5, 0) != 5 || recv(q[1], buf, sizeof buf, 0) != 4 ||
        recv(q[1], buf, sizeof buf, 0) != 5 || memcmp(buf, "rec22", 5) != 0)
        fail("q does not keep record boundaries");
    if (send(d[1], "dgram", 5, 0) != 5 || recv(d[0], buf, sizeof buf, 0) != 5 || memcmp(buf, "dgram", 5) != 0)
        fail("d does not carry datagrams");
    if (read_all(c[0], buf, 10) != 0 || memcmp(buf, "from child", 10) != 0)
        fail("c[0] lost what the child queued");
    kill(child, SIGUSR1);
    if (read_all(c[0], buf, 2) != 0 || memcmp(buf, "ok", 2) != 0)
        fail("the child did not read what was queued for it");
    int status;
    if (waitpid(child, &status, 0) != child || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fail("the child did not exit cleanly");
    succeed();
}
