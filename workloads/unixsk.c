/*
 * unixsk: unix sockets beyond connected pairs, to check they come back as
 * they were.
 *
 *   unixsk all DIR   in one process:
 *     L  stream socket listening at DIR/listen.sock (backlog 7), with two
 *        connections waiting to be accepted (clients w1 then w2) and one
 *        accepted (a, its client c) with "ping" queued for a, "pong" for c
 *     A  seqpacket socket listening at an abstract name, one client waiting
 *     D  datagram socket bound at DIR/dgram.sock, unconnected, with
 *        "first", "second message" queued from an unnamed socket and
 *        "from e" from e, a datagram socket connected to D
 *     B  datagram socket bound at an abstract name, "abstract" queued
 *     Q  seqpacket pair, "a", "bb", "ccc" queued for q[0]
 *     G  datagram pair, "g1", "g22" queued for g[1]
 *     H  stream pair, "tail" queued for h[1], then h[0] shut down for
 *        writing (h[1] for reading)
 *     Z  stream pair, "left" queued for z[0], then z[1] closed
 *   unixsk syslog PATH   a datagram socket connected to PATH (outside the
 *        tree), which logs "before" once ready and "after <pid>" on SIGUSR1
 *   unixsk named-sender DIR   a datagram socket at DIR/r.sock with a message
 *        queued from a socket bound at DIR/s.sock
 *   unixsk deleted DIR   a datagram socket bound at DIR/r.sock, unlinked
 *   unixsk credentials DIR   a datagram socket at DIR/c.sock with SO_PASSCRED
 *        and a message queued
 *
 * Prints "READY <pid>". On SIGUSR1 checks everything (queues in order with
 * their bounds, names, accept order, shutdown states, new traffic) and
 * prints "OK" or "FAIL <what>".
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "workload.h"

static socklen_t path_addr(struct sockaddr_un *a, const char *dir, const char *name)
{
    memset(a, 0, sizeof *a);
    a->sun_family = AF_UNIX;
    snprintf(a->sun_path, sizeof a->sun_path, "%s/%s", dir, name);
    return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(a->sun_path) + 1);
}

static socklen_t abstract_addr(struct sockaddr_un *a, const char *what)
{
    memset(a, 0, sizeof *a);
    a->sun_family = AF_UNIX;
    int n = snprintf(a->sun_path + 1, sizeof a->sun_path - 1, "crust-unixsk-%s-%d", what, (int)getpid());
    return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + n);
}

static int bound(int type, struct sockaddr_un *a, socklen_t len)
{
    int s = socket(AF_UNIX, type, 0);
    if (s < 0 || bind(s, (struct sockaddr *)a, len))
        die("bind");
    return s;
}

static int connected(int type, struct sockaddr_un *a, socklen_t len)
{
    int s = socket(AF_UNIX, type, 0);
    if (s < 0 || connect(s, (struct sockaddr *)a, len))
        die("connect");
    return s;
}

/* The next message on s (non-blocking): it must be `want`, with its bounds. */
static void expect_msg(int s, const char *want, const char *what)
{
    char buf[64];
    ssize_t n = recv(s, buf, sizeof buf, MSG_DONTWAIT);
    if (n != (ssize_t)strlen(want) || memcmp(buf, want, (size_t)n) != 0)
        fail("%s: got %zd bytes (%.*s), not \"%s\"", what, n, n > 0 ? (int)n : 0, buf, want);
}

static void expect_empty(int s, const char *what)
{
    char c;
    ssize_t n = recv(s, &c, 1, MSG_DONTWAIT);
    if (n != -1 || errno != EAGAIN)
        fail("%s: more queued than expected (%zd)", what, n);
}

static void same_name(int s, struct sockaddr_un *want, socklen_t len, const char *what)
{
    struct sockaddr_un got;
    socklen_t glen = sizeof got;
    if (getsockname(s, (struct sockaddr *)&got, &glen) || glen != len || memcmp(&got, want, len) != 0)
        fail("%s is not bound to its name any more", what);
}

static int run_syslog(const char *path)
{
    struct sockaddr_un a = { .sun_family = AF_UNIX };
    snprintf(a.sun_path, sizeof a.sun_path, "%s", path);
    int s = connected(SOCK_DGRAM, &a, sizeof a);
    if (send(s, "before", 6, 0) != 6)
        die("send before");
    printf("READY %d\n", (int)getpid());
    wait_usr1();
    char msg[32];
    int n = snprintf(msg, sizeof msg, "after %d", (int)getpid());
    if (send(s, msg, (size_t)n, 0) != n)
        fail("cannot log after the restore: %s", strerror(errno));
    succeed();
}

int main(int argc, char **argv)
{
    workload_init();
    if (argc == 3 && strcmp(argv[1], "syslog") == 0)
        return run_syslog(argv[2]);
    if (argc == 3 && strcmp(argv[1], "all") != 0) {
        struct sockaddr_un ra, sa;
        socklen_t rlen = path_addr(&ra, argv[2], "r.sock"), slen = path_addr(&sa, argv[2], "s.sock");
        if (strcmp(argv[1], "named-sender") == 0) {
            int r = bound(SOCK_DGRAM, &ra, rlen), s = bound(SOCK_DGRAM, &sa, slen);
            if (sendto(s, "hi", 2, 0, (struct sockaddr *)&ra, rlen) != 2)
                die("sendto");
            (void)r;
        } else if (strcmp(argv[1], "deleted") == 0) {
            bound(SOCK_DGRAM, &ra, rlen);
            if (unlink(ra.sun_path))
                die("unlink");
        } else if (strcmp(argv[1], "credentials") == 0) {
            int r = bound(SOCK_DGRAM, &ra, rlen), one = 1, s = socket(AF_UNIX, SOCK_DGRAM, 0);
            if (setsockopt(r, SOL_SOCKET, SO_PASSCRED, &one, sizeof one) ||
                sendto(s, "hi", 2, 0, (struct sockaddr *)&ra, rlen) != 2)
                die("credentials");
        } else {
            fprintf(stderr, "unknown mode %s\n", argv[1]);
            return 2;
        }
        printf("READY %d\n", (int)getpid());
        wait_usr1();
        succeed();
    }
    if (argc != 3 || strcmp(argv[1], "all") != 0) {
        fprintf(stderr, "usage: unixsk all|named-sender|deleted|credentials DIR | unixsk syslog PATH\n");
        return 2;
    }
    const char *dir = argv[2];
    signal(SIGPIPE, SIG_IGN);
    struct sockaddr_un la, aa, da, ba;
    socklen_t llen = path_addr(&la, dir, "listen.sock"), alen = abstract_addr(&aa, "seq");
    socklen_t dlen = path_addr(&da, dir, "dgram.sock"), blen = abstract_addr(&ba, "dgram");

    int l = bound(SOCK_STREAM, &la, llen);
    if (listen(l, 7))
        die("listen");
    int c = connected(SOCK_STREAM, &la, llen);
    int acc = accept(l, NULL, NULL);
    if (acc < 0 || write(c, "ping", 4) != 4 || write(acc, "pong", 4) != 4)
        die("accepted connection");
    int w1 = connected(SOCK_STREAM, &la, llen);
    int w2 = connected(SOCK_STREAM, &la, llen);

    int as = bound(SOCK_SEQPACKET, &aa, alen);
    if (listen(as, 3))
        die("listen seqpacket");
    int aw = connected(SOCK_SEQPACKET, &aa, alen);

    int d = bound(SOCK_DGRAM, &da, dlen);
    int anon = socket(AF_UNIX, SOCK_DGRAM, 0);
    if (sendto(anon, "first", 5, 0, (struct sockaddr *)&da, dlen) != 5 ||
        sendto(anon, "second message", 14, 0, (struct sockaddr *)&da, dlen) != 14)
        die("sendto d");
    close(anon);
    int e = connected(SOCK_DGRAM, &da, dlen);
    if (send(e, "from e", 6, 0) != 6)
        die("send e");

    int b = bound(SOCK_DGRAM, &ba, blen);
    anon = socket(AF_UNIX, SOCK_DGRAM, 0);
    if (sendto(anon, "abstract", 8, 0, (struct sockaddr *)&ba, blen) != 8)
        die("sendto b");
    close(anon);

    int q[2], g[2], h[2], z[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET, 0, q) || socketpair(AF_UNIX, SOCK_DGRAM, 0, g) ||
        socketpair(AF_UNIX, SOCK_STREAM, 0, h) || socketpair(AF_UNIX, SOCK_STREAM, 0, z))
        die("socketpair");
    if (send(q[1], "a", 1, 0) != 1 || send(q[1], "bb", 2, 0) != 2 || send(q[1], "ccc", 3, 0) != 3 ||
        send(g[0], "g1", 2, 0) != 2 || send(g[0], "g22", 3, 0) != 3 || write(h[0], "tail", 4) != 4 ||
        shutdown(h[0], SHUT_WR) || write(z[1], "left", 4) != 4)
        die("queue");
    close(z[1]);

    printf("READY %d\n", (int)getpid());
    wait_usr1();

    /* Names. */
    same_name(l, &la, llen, "the listener");
    same_name(as, &aa, alen, "the seqpacket listener");
    same_name(d, &da, dlen, "the datagram socket");
    same_name(b, &ba, blen, "the abstract datagram socket");
    struct stat st;
    if (stat(la.sun_path, &st) || !S_ISSOCK(st.st_mode))
        fail("%s is not a socket file", la.sun_path);

    /* The accepted connection, its queues both ways. */
    expect_msg(acc, "ping", "the accepted connection");
    expect_msg(c, "pong", "its client");
    if (write(c, "more", 4) != 4)
        fail("the client cannot write");
    expect_msg(acc, "more", "the accepted connection, after");

    /* The waiting connections, accepted in order. */
    if (write(w1, "1", 1) != 1 || write(w2, "2", 1) != 1)
        fail("waiting clients cannot write");
    int f1 = accept(l, NULL, NULL), f2 = accept(l, NULL, NULL);
    if (f1 < 0 || f2 < 0)
        fail("the listener does not accept its waiting connections: %s", strerror(errno));
    expect_msg(f1, "1", "the first waiting connection");
    expect_msg(f2, "2", "the second waiting connection");
    int fa = accept(as, NULL, NULL);
    if (fa < 0 || send(aw, "seq", 3, 0) != 3)
        fail("the seqpacket listener does not accept its waiting connection");
    expect_msg(fa, "seq", "the seqpacket connection");
    /* The listener still answers at its path. */
    int late = connected(SOCK_STREAM, &la, llen);
    int fl = accept(l, NULL, NULL);
    if (fl < 0 || write(late, "late", 4) != 4)
        fail("the listener does not answer at its path");
    expect_msg(fl, "late", "a new connection");

    /* Datagram queues, in order with their bounds. */
    expect_msg(d, "first", "d");
    expect_msg(d, "second message", "d");
    expect_msg(d, "from e", "d");
    expect_empty(d, "d");
    if (send(e, "again", 5, 0) != 5)
        fail("e is not connected to d any more");
    expect_msg(d, "again", "d, after");
    expect_msg(b, "abstract", "b");
    expect_empty(b, "b");
    expect_msg(q[0], "a", "q");
    expect_msg(q[0], "bb", "q");
    expect_msg(q[0], "ccc", "q");
    expect_empty(q[0], "q");
    expect_msg(g[1], "g1", "g");
    expect_msg(g[1], "g22", "g");
    expect_empty(g[1], "g");

    /* Half-closed: h[1] reads the tail then the end; h[0] cannot write, h[1] can. */
    expect_msg(h[1], "tail", "h[1]");
    char ch;
    if (read(h[1], &ch, 1) != 0)
        fail("h[1] does not see the end after the tail");
    if (send(h[0], "x", 1, MSG_NOSIGNAL) != -1 || errno != EPIPE)
        fail("h[0] can write after its shutdown");
    if (write(h[1], "back", 4) != 4)
        fail("h[1] cannot write back");
    expect_msg(h[0], "back", "h[0]");
    /* Semi-closed: z[0] reads what its closed peer left, then the end. */
    expect_msg(z[0], "left", "z[0]");
    if (read(z[0], &ch, 1) != 0)
        fail("z[0] does not see its peer closed");
    succeed();
}
