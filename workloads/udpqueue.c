/*
 * udpqueue: UDP sockets with datagrams waiting to be read, for a dump and
 * restore. Usage: udpqueue P1 P2 P3 P4 (free ports).
 *
 *   u4   UDP bound to 127.0.0.1:P1, a receive buffer of 1 MiB; queued, in
 *        order: "first" from s4, an empty datagram from s4, 60000 bytes
 *        (a pattern) from s4, then "outside" which the test sends from
 *        127.0.0.3:P4 after READY (its socket is gone before the restore)
 *   u6   UDP bound to [::]:P3 (dual stack), IPV6_RECVPKTINFO set; queued:
 *        "mapped" from s4 (to 127.0.0.1), "six" from s6 (to ::1)
 *   uc   UDP bound to 127.0.0.1 (any port), connected to s4; queued:
 *        "to connected" from s4
 *   s4   UDP bound to 127.0.0.1:P2, still open (the restore cannot send
 *        from its port)
 *   s6   UDP bound to [::1] (any port)
 *
 * Prints "READY" once its own datagrams are queued, waits for SIGUSR1 (the
 * test sends "outside" before the dump), then reads every queue: each
 * datagram in order, whole, from its sender, to its address (u6's
 * IPV6_PKTINFO), nothing more; and the options the dump peeked with are as
 * they were (no peek offset, u4 without IP_PKTINFO). Prints OK.
 */
#define _GNU_SOURCE
#include "workload.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#define BIG 60000

static struct sockaddr_in v4(const char *ip, int port)
{
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port) };
    inet_pton(AF_INET, ip, &a.sin_addr);
    return a;
}

static struct sockaddr_in6 v6(const char *ip, int port)
{
    struct sockaddr_in6 a = { .sin6_family = AF_INET6, .sin6_port = htons(port) };
    inet_pton(AF_INET6, ip, &a.sin6_addr);
    return a;
}

static int udp(int family, const void *addr, socklen_t len)
{
    int fd = socket(family, SOCK_DGRAM, 0);
    if (fd < 0 || bind(fd, addr, len) != 0)
        die("udp bind");
    return fd;
}

static void send_to(int from, const void *data, size_t n, int to)
{
    struct sockaddr_storage a;
    socklen_t len = sizeof a;
    if (getsockname(to, (struct sockaddr *)&a, &len) != 0)
        die("getsockname");
    /* A socket on [::] is reached at 127.0.0.1 from an IPv4 one, at ::1 from an IPv6 one. */
    if (a.ss_family == AF_INET6) {
        struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&a;
        int port = ntohs(a6->sin6_port);
        struct sockaddr_storage f;
        socklen_t flen = sizeof f;
        if (getsockname(from, (struct sockaddr *)&f, &flen) != 0)
            die("getsockname");
        if (f.ss_family == AF_INET) {
            struct sockaddr_in t = v4("127.0.0.1", port);
            if (sendto(from, data, n, 0, (struct sockaddr *)&t, sizeof t) != (ssize_t)n)
                die("sendto");
            return;
        }
        struct sockaddr_in6 t = v6("::1", port);
        if (sendto(from, data, n, 0, (struct sockaddr *)&t, sizeof t) != (ssize_t)n)
            die("sendto");
        return;
    }
    if (sendto(from, data, n, 0, (struct sockaddr *)&a, len) != (ssize_t)n)
        die("sendto");
}

static unsigned char pattern(size_t i)
{
    return (unsigned char)(i * 13 + i / 253);
}

/* The next datagram of `fd` must be `want` (n bytes) from the socket `sender`
 * (or, sender -1, from `ip`:`port`); `dst`, if not NULL, the address it
 * was sent to as IPV6_PKTINFO tells. */
static void expect(const char *sock, int fd, const void *want, size_t n, int sender, const char *ip, int port, const char *dst)
{
    static unsigned char buf[65536];
    char control[256];
    struct sockaddr_storage from;
    struct iovec iov = { buf, sizeof buf };
    struct msghdr m = { .msg_name = &from, .msg_namelen = sizeof from, .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof control };
    ssize_t got = recvmsg(fd, &m, MSG_DONTWAIT);
    if (got < 0)
        fail("%s: no datagram where %zu bytes were queued: %s", sock, n, strerror(errno));
    if ((size_t)got != n || memcmp(buf, want, n) != 0 || (m.msg_flags & MSG_TRUNC))
        fail("%s: a datagram of %zd bytes (\"%.*s\") where %zu (\"%.*s\") were queued", sock, got, (int)(got < 20 ? got : 20), buf, n, (int)(n < 20 ? n : 20), (const char *)want);
    char fromtext[INET6_ADDRSTRLEN] = "?";
    int fromport = 0;
    if (from.ss_family == AF_INET) {
        struct sockaddr_in *f = (struct sockaddr_in *)&from;
        inet_ntop(AF_INET, &f->sin_addr, fromtext, sizeof fromtext);
        fromport = ntohs(f->sin_port);
    } else if (from.ss_family == AF_INET6) {
        struct sockaddr_in6 *f = (struct sockaddr_in6 *)&from;
        inet_ntop(AF_INET6, &f->sin6_addr, fromtext, sizeof fromtext);
        fromport = ntohs(f->sin6_port);
    }
    if (sender >= 0) {
        struct sockaddr_storage s;
        socklen_t slen = sizeof s;
        if (getsockname(sender, (struct sockaddr *)&s, &slen) != 0)
            die("getsockname");
        char stext[INET6_ADDRSTRLEN] = "?";
        int sport;
        if (s.ss_family == AF_INET) {
            struct sockaddr_in *a = (struct sockaddr_in *)&s;
            inet_ntop(AF_INET, &a->sin_addr, stext, sizeof stext);
            sport = ntohs(a->sin_port);
        } else {
            struct sockaddr_in6 *a = (struct sockaddr_in6 *)&s;
            inet_ntop(AF_INET6, &a->sin6_addr, stext, sizeof stext);
            sport = ntohs(a->sin6_port);
        }
        /* An IPv6 socket sees an IPv4 sender as ::ffff:a.b.c.d. */
        char mapped[INET6_ADDRSTRLEN + 8];
        snprintf(mapped, sizeof mapped, "::ffff:%s", stext);
        if ((strcmp(fromtext, stext) != 0 && strcmp(fromtext, mapped) != 0) || fromport != sport)
            fail("%s: \"%.*s\" from %s port %d, not %s port %d", sock, (int)(n < 20 ? n : 20), (const char *)want, fromtext, fromport, stext, sport);
    } else if (strcmp(fromtext, ip) != 0 || fromport != port) {
        fail("%s: \"%.*s\" from %s port %d, not %s port %d", sock, (int)(n < 20 ? n : 20), (const char *)want, fromtext, fromport, ip, port);
    }
    if (dst) {
        int seen = 0;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
            if (c->cmsg_level == IPPROTO_IPV6 && c->cmsg_type == IPV6_PKTINFO) {
                struct in6_pktinfo pi;
                memcpy(&pi, CMSG_DATA(c), sizeof pi);
                char t[INET6_ADDRSTRLEN];
                inet_ntop(AF_INET6, &pi.ipi6_addr, t, sizeof t);
                if (strcmp(t, dst) != 0)
                    fail("%s: \"%s\" was sent to %s, not %s", sock, (const char *)want, t, dst);
                seen = 1;
            }
        }
        if (!seen)
            fail("%s: no IPV6_PKTINFO with \"%s\"", sock, (const char *)want);
    }
}

static void empty(const char *sock, int fd)
{
    char c;
    ssize_t got = recv(fd, &c, 1, MSG_DONTWAIT);
    if (got >= 0)
        fail("%s: a datagram more than were queued (%zd bytes)", sock, got);
    if (errno != EAGAIN)
        fail("%s: recv: %s", sock, strerror(errno));
}

static void option(const char *sock, int fd, int level, int opt, int want, const char *name)
{
    int v = 0;
    socklen_t len = sizeof v;
    if (getsockopt(fd, level, opt, &v, &len) != 0 || v != want)
        fail("%s: %s is %d, not %d", sock, name, v, want);
}

int main(int argc, char **argv)
{
    workload_init();
    if (argc != 5) {
        fprintf(stderr, "usage: udpqueue P1 P2 P3 P4\n");
        return 2;
    }
    int p1 = atoi(argv[1]), p2 = atoi(argv[2]), p3 = atoi(argv[3]), p4 = atoi(argv[4]);
    struct sockaddr_in a1 = v4("127.0.0.1", p1), a2 = v4("127.0.0.1", p2), any4 = v4("127.0.0.1", 0);
    struct sockaddr_in6 a3 = v6("::", p3), any6 = v6("::1", 0);
    int u4 = socket(AF_INET, SOCK_DGRAM, 0);
    int big = 1 << 20, one = 1, zero = 0;
    if (u4 < 0 || setsockopt(u4, SOL_SOCKET, SO_RCVBUF, &big, sizeof big) != 0 || bind(u4, (struct sockaddr *)&a1, sizeof a1) != 0)
        die("u4");
    int u6 = socket(AF_INET6, SOCK_DGRAM, 0);
    if (u6 < 0 || setsockopt(u6, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero) != 0 ||
        setsockopt(u6, IPPROTO_IPV6, IPV6_RECVPKTINFO, &one, sizeof one) != 0 || bind(u6, (struct sockaddr *)&a3, sizeof a3) != 0)
        die("u6");
    int s4 = udp(AF_INET, &a2, sizeof a2);
    int s6 = udp(AF_INET6, &any6, sizeof any6);
    int uc = udp(AF_INET, &any4, sizeof any4);
    if (connect(uc, (struct sockaddr *)&a2, sizeof a2) != 0)
        die("uc connect");

    static unsigned char bigdata[BIG];
    for (size_t i = 0; i < BIG; i++)
        bigdata[i] = pattern(i);
    send_to(s4, "first", 5, u4);
    send_to(s4, "", 0, u4);
    send_to(s4, bigdata, BIG, u4);
    send_to(s4, "mapped", 6, u6);
    send_to(s6, "six", 3, u6);
    send_to(s4, "to connected", 12, uc);
    printf("READY\n");
    wait_usr1();

    expect("u4", u4, "first", 5, s4, NULL, 0, NULL);
    expect("u4", u4, "", 0, s4, NULL, 0, NULL);
    expect("u4", u4, bigdata, BIG, s4, NULL, 0, NULL);
    expect("u4", u4, "outside", 7, -1, "127.0.0.3", p4, NULL);
    empty("u4", u4);
    expect("u6", u6, "mapped", 6, s4, NULL, 0, "::ffff:127.0.0.1");
    expect("u6", u6, "six", 3, s6, NULL, 0, "::1");
    empty("u6", u6);
    expect("uc", uc, "to connected", 12, s4, NULL, 0, NULL);
    empty("uc", uc);
    empty("s4", s4);
    empty("s6", s6);

    int fds[] = { u4, u6, uc, s4, s6 };
    for (int i = 0; i < 5; i++)
        option("a socket", fds[i], SOL_SOCKET, SO_PEEK_OFF, -1, "SO_PEEK_OFF");
    option("u4", u4, IPPROTO_IP, IP_PKTINFO, 0, "IP_PKTINFO");
    option("u6", u6, IPPROTO_IPV6, IPV6_RECVPKTINFO, 1, "IPV6_RECVPKTINFO");
    option("uc", uc, IPPROTO_IP, IP_PKTINFO, 0, "IP_PKTINFO");

    /* And the sockets go on: a datagram both ways between s4 and uc. */
    if (send(uc, "again", 5, 0) != 5)
        fail("uc: send: %s", strerror(errno));
    struct sockaddr_in from;
    socklen_t fromlen = sizeof from;
    char buf[16];
    for (int tries = 0; tries < 100; tries++) {
        ssize_t n = recvfrom(s4, buf, sizeof buf, MSG_DONTWAIT, (struct sockaddr *)&from, &fromlen);
        if (n == 5 && memcmp(buf, "again", 5) == 0) {
            printf("OK\n");
            return 0;
        }
        if (n >= 0)
            fail("s4: an unexpected datagram of %zd bytes", n);
        sleep_ms(10);
    }
    fail("s4: nothing from uc after the restore");
}
