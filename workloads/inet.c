/*
 * inet: TCP and UDP sockets over IPv4 and IPv6 with a spread of options,
 * for a dump and restore. Usage: inet P1 P2 P3 P4 P5 (free ports).
 *
 *   tcp4   TCP listening on 127.0.0.1:P1, backlog 7, non-blocking, owned
 *          (F_SETOWN) by this process; SO_REUSEADDR, keepalive with its
 *          timings, TCP_NODELAY, buffer sizes, linger, priority, mark, TTL,
 *          TOS, IP_FREEBIND, timeouts, SO_RCVLOWAT
 *   tcp6   TCP listening on [::]:P2 (dual stack, IPV6_V6ONLY 0), backlog 3,
 *          SO_REUSEPORT, TCP_CORK, hop limit, traffic class, bound to lo
 *   udp4   UDP bound to 127.0.0.1:P3, SO_BROADCAST, a socket filter (classic
 *          BPF: the whole datagram passes)
 *   udpc   UDP connected to udp4, bound to 127.0.0.1:P4
 *   udp6   UDP bound to [::1]:P5, IPV6_V6ONLY 1, IPV6_RECVPKTINFO
 *   tcpb   TCP bound (not listening) to [::ffff:127.0.0.1]:P4
 *   tcpu   TCP unbound, TCP_NODELAY, SO_KEEPALIVE
 *
 * Prints "READY", waits for SIGUSR1; then checks every option, accepts one
 * connection on each listener (the test makes them after the restore),
 * reads a line from each and answers "ok <line>", exchanges datagrams on
 * the UDP sockets, and prints OK.
 */
#define _GNU_SOURCE
#include "workload.h"

#include <arpa/inet.h>
#include <linux/filter.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

static void set(int fd, int level, int opt, int v, const char *name)
{
    if (setsockopt(fd, level, opt, &v, sizeof v) != 0)
        die(name);
}

static void expect(const char *sock, int fd, int level, int opt, int want, const char *name)
{
    int v = 0;
    socklen_t len = sizeof v;
    if (getsockopt(fd, level, opt, &v, &len) != 0)
        fail("%s: getsockopt %s: %s", sock, name, strerror(errno));
    if (v != want)
        fail("%s: %s is %d, not %d", sock, name, v, want);
}

#define SET(fd, level, opt, v) set(fd, level, opt, v, #opt)
#define EXPECT(s, fd, level, opt, v) expect(s, fd, level, opt, v, #opt)

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

/* Accepts one connection on `lfd` (waiting up to 10 s), reads a line and
 * answers "ok <line>". */
static void serve_one(const char *sock, int lfd)
{
    struct pollfd p = { .fd = lfd, .events = POLLIN };
    if (poll(&p, 1, 10000) != 1)
        fail("%s: no connection to accept", sock);
    int c = accept(lfd, NULL, NULL);
    if (c < 0)
        fail("%s: accept: %s", sock, strerror(errno));
    char buf[128];
    int flags = fcntl(c, F_GETFL);
    fcntl(c, F_SETFL, flags & ~O_NONBLOCK);
    ssize_t n = read(c, buf, sizeof buf - 1);
    if (n <= 0)
        fail("%s: reading from the accepted connection: %s", sock, n < 0 ? strerror(errno) : "EOF");
    buf[n] = 0;
    char reply[160];
    int len = snprintf(reply, sizeof reply, "ok %s", buf);
    if (write(c, reply, len) != len)
        fail("%s: answering: %s", sock, strerror(errno));
    close(c);
    printf("%s served %s", sock, buf);
}

static void recv_expect(const char *sock, int fd, const char *want, struct sockaddr *from, socklen_t *fromlen)
{
    struct pollfd p = { .fd = fd, .events = POLLIN };
    if (poll(&p, 1, 5000) != 1)
        fail("%s: no datagram", sock);
    char buf[64];
    ssize_t n = recvfrom(fd, buf, sizeof buf - 1, 0, from, fromlen);
    if (n < 0)
        fail("%s: recvfrom: %s", sock, strerror(errno));
    buf[n] = 0;
    if (strcmp(buf, want) != 0)
        fail("%s: received \"%s\", not \"%s\"", sock, buf, want);
}

int main(int argc, char **argv)
{
    workload_init();
    if (argc != 6) {
        fprintf(stderr, "usage: inet P1 P2 P3 P4 P5\n");
        return 2;
    }
    int p1 = atoi(argv[1]), p2 = atoi(argv[2]), p3 = atoi(argv[3]), p4 = atoi(argv[4]), p5 = atoi(argv[5]);

    int tcp4 = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    SET(tcp4, SOL_SOCKET, SO_REUSEADDR, 1);
    SET(tcp4, SOL_SOCKET, SO_KEEPALIVE, 1);
    SET(tcp4, IPPROTO_TCP, TCP_KEEPIDLE, 33);
    SET(tcp4, IPPROTO_TCP, TCP_KEEPINTVL, 7);
    SET(tcp4, IPPROTO_TCP, TCP_KEEPCNT, 4);
    SET(tcp4, IPPROTO_TCP, TCP_NODELAY, 1);
    SET(tcp4, SOL_SOCKET, SO_SNDBUF, 65536);
    SET(tcp4, SOL_SOCKET, SO_RCVBUF, 100000);
    SET(tcp4, IPPROTO_IP, IP_TTL, 33);
    SET(tcp4, IPPROTO_IP, IP_TOS, IPTOS_LOWDELAY); /* sets the priority from the TOS */
    SET(tcp4, SOL_SOCKET, SO_PRIORITY, 3);
    SET(tcp4, SOL_SOCKET, SO_MARK, 42);
    SET(tcp4, SOL_SOCKET, SO_RCVLOWAT, 2);
    SET(tcp4, IPPROTO_IP, IP_FREEBIND, 1);
    struct linger lg = { 1, 5 };
    if (setsockopt(tcp4, SOL_SOCKET, SO_LINGER, &lg, sizeof lg) != 0)
        die("SO_LINGER");
    struct timeval rcvtmo = { 2, 500000 }, sndtmo = { 1, 0 };
    if (setsockopt(tcp4, SOL_SOCKET, SO_RCVTIMEO, &rcvtmo, sizeof rcvtmo) != 0 ||
        setsockopt(tcp4, SOL_SOCKET, SO_SNDTIMEO, &sndtmo, sizeof sndtmo) != 0)
        die("timeouts");
    struct sockaddr_in a1 = v4("127.0.0.1", p1);
    if (bind(tcp4, (struct sockaddr *)&a1, sizeof a1) != 0 || listen(tcp4, 7) != 0)
        die("tcp4 bind/listen");
    if (fcntl(tcp4, F_SETOWN, getpid()) != 0)
        die("F_SETOWN");

    int tcp6 = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
    SET(tcp6, IPPROTO_IPV6, IPV6_V6ONLY, 0);
    SET(tcp6, SOL_SOCKET, SO_REUSEPORT, 1);
    SET(tcp6, IPPROTO_TCP, TCP_CORK, 1);
    SET(tcp6, IPPROTO_IPV6, IPV6_UNICAST_HOPS, 20);
    SET(tcp6, IPPROTO_IPV6, IPV6_TCLASS, 0x20);
    if (setsockopt(tcp6, SOL_SOCKET, SO_BINDTODEVICE, "lo", 3) != 0)
        die("SO_BINDTODEVICE");
    struct sockaddr_in6 a2 = v6("::", p2);
    if (bind(tcp6, (struct sockaddr *)&a2, sizeof a2) != 0 || listen(tcp6, 3) != 0)
        die("tcp6 bind/listen");

    int udp4 = socket(AF_INET, SOCK_DGRAM, 0);
    SET(udp4, SOL_SOCKET, SO_BROADCAST, 1);
    struct sock_filter prog[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_LEN, 0),
        BPF_STMT(BPF_RET | BPF_A, 0),
    };
    struct sock_fprog fprog = { 2, prog };
    if (setsockopt(udp4, SOL_SOCKET, SO_ATTACH_FILTER, &fprog, sizeof fprog) != 0)
        die("SO_ATTACH_FILTER");
    struct sockaddr_in a3 = v4("127.0.0.1", p3);
    if (bind(udp4, (struct sockaddr *)&a3, sizeof a3) != 0)
        die("udp4 bind");

    int udpc = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in a4 = v4("127.0.0.1", p4);
    if (bind(udpc, (struct sockaddr *)&a4, sizeof a4) != 0 || connect(udpc, (struct sockaddr *)&a3, sizeof a3) != 0)
        die("udpc bind/connect");

    int udp6 = socket(AF_INET6, SOCK_DGRAM, 0);
    SET(udp6, IPPROTO_IPV6, IPV6_V6ONLY, 1);
    SET(udp6, IPPROTO_IPV6, IPV6_RECVPKTINFO, 1);
    struct sockaddr_in6 a5 = v6("::1", p5);
    if (bind(udp6, (struct sockaddr *)&a5, sizeof a5) != 0)
        die("udp6 bind");

    int tcpb = socket(AF_INET6, SOCK_STREAM, 0);
    struct sockaddr_in6 ab = v6("::ffff:127.0.0.1", p4);
    if (bind(tcpb, (struct sockaddr *)&ab, sizeof ab) != 0)
        die("tcpb bind");

    int tcpu = socket(AF_INET, SOCK_STREAM, 0);
    SET(tcpu, IPPROTO_TCP, TCP_NODELAY, 1);
    SET(tcpu, SOL_SOCKET, SO_KEEPALIVE, 1);

    printf("READY tcp4=%d tcp6=%d udp4=%d udpc=%d udp6=%d tcpb=%d tcpu=%d\n", tcp4, tcp6, udp4, udpc, udp6, tcpb, tcpu);
    wait_usr1();

    EXPECT("tcp4", tcp4, SOL_SOCKET, SO_ACCEPTCONN, 1);
    EXPECT("tcp4", tcp4, SOL_SOCKET, SO_REUSEADDR, 1);
    EXPECT("tcp4", tcp4, SOL_SOCKET, SO_REUSEPORT, 0);
    EXPECT("tcp4", tcp4, SOL_SOCKET, SO_KEEPALIVE, 1);
    EXPECT("tcp4", tcp4, IPPROTO_TCP, TCP_KEEPIDLE, 33);
    EXPECT("tcp4", tcp4, IPPROTO_TCP, TCP_KEEPINTVL, 7);
    EXPECT("tcp4", tcp4, IPPROTO_TCP, TCP_KEEPCNT, 4);
    EXPECT("tcp4", tcp4, IPPROTO_TCP, TCP_NODELAY, 1);
    EXPECT("tcp4", tcp4, IPPROTO_TCP, TCP_CORK, 0);
    EXPECT("tcp4", tcp4, SOL_SOCKET, SO_SNDBUF, 131072);
    EXPECT("tcp4", tcp4, SOL_SOCKET, SO_RCVBUF, 200000);
    EXPECT("tcp4", tcp4, SOL_SOCKET, SO_PRIORITY, 3);
    EXPECT("tcp4", tcp4, SOL_SOCKET, SO_MARK, 42);
    EXPECT("tcp4", tcp4, SOL_SOCKET, SO_RCVLOWAT, 2);
    EXPECT("tcp4", tcp4, IPPROTO_IP, IP_TTL, 33);
    EXPECT("tcp4", tcp4, IPPROTO_IP, IP_TOS, IPTOS_LOWDELAY);
    EXPECT("tcp4", tcp4, IPPROTO_IP, IP_FREEBIND, 1);
    struct linger lg2;
    socklen_t len = sizeof lg2;
    if (getsockopt(tcp4, SOL_SOCKET, SO_LINGER, &lg2, &len) != 0 || lg2.l_onoff != 1 || lg2.l_linger != 5)
        fail("tcp4: SO_LINGER is {%d, %d}, not {1, 5}", lg2.l_onoff, lg2.l_linger);
    struct timeval tv;
    len = sizeof tv;
    if (getsockopt(tcp4, SOL_SOCKET, SO_RCVTIMEO, &tv, &len) != 0 || tv.tv_sec != 2 || tv.tv_usec != 500000)
        fail("tcp4: SO_RCVTIMEO is %ld.%06ld", (long)tv.tv_sec, (long)tv.tv_usec);
    if (getsockopt(tcp4, SOL_SOCKET, SO_SNDTIMEO, &tv, &len) != 0 || tv.tv_sec != 1 || tv.tv_usec != 0)
        fail("tcp4: SO_SNDTIMEO is %ld.%06ld", (long)tv.tv_sec, (long)tv.tv_usec);
    if (!(fcntl(tcp4, F_GETFL) & O_NONBLOCK))
        fail("tcp4: not O_NONBLOCK");
    if (fcntl(tcp4, F_GETFD) & FD_CLOEXEC)
        fail("tcp4: FD_CLOEXEC");
    if (fcntl(tcp4, F_GETOWN) != getpid())
        fail("tcp4: owner %d, not %d", fcntl(tcp4, F_GETOWN), getpid());

    EXPECT("tcp6", tcp6, SOL_SOCKET, SO_ACCEPTCONN, 1);
    EXPECT("tcp6", tcp6, IPPROTO_IPV6, IPV6_V6ONLY, 0);
    EXPECT("tcp6", tcp6, SOL_SOCKET, SO_REUSEPORT, 1);
    EXPECT("tcp6", tcp6, SOL_SOCKET, SO_REUSEADDR, 0);
    EXPECT("tcp6", tcp6, IPPROTO_TCP, TCP_CORK, 1);
    EXPECT("tcp6", tcp6, IPPROTO_TCP, TCP_NODELAY, 0);
    EXPECT("tcp6", tcp6, IPPROTO_IPV6, IPV6_UNICAST_HOPS, 20);
    EXPECT("tcp6", tcp6, IPPROTO_IPV6, IPV6_TCLASS, 0x20);
    char dev[IFNAMSIZ] = "";
    len = sizeof dev;
    if (getsockopt(tcp6, SOL_SOCKET, SO_BINDTODEVICE, dev, &len) != 0 || strcmp(dev, "lo") != 0)
        fail("tcp6: bound to device \"%s\", not lo", dev);
    if (fcntl(tcp6, F_GETFL) & O_NONBLOCK)
        fail("tcp6: O_NONBLOCK");
    if (!(fcntl(tcp6, F_GETFD) & FD_CLOEXEC))
        fail("tcp6: no FD_CLOEXEC");

    EXPECT("udp4", udp4, SOL_SOCKET, SO_BROADCAST, 1);
    struct sock_filter got_prog[4];
    len = 4; /* SO_GET_FILTER counts in instructions */
    if (getsockopt(udp4, SOL_SOCKET, SO_GET_FILTER, got_prog, &len) != 0 || len != 2 || memcmp(got_prog, prog, sizeof prog) != 0)
        fail("udp4: the socket filter is not the one attached (%u instructions)", (unsigned)len);
    EXPECT("udp6", udp6, IPPROTO_IPV6, IPV6_V6ONLY, 1);
    EXPECT("udp6", udp6, IPPROTO_IPV6, IPV6_RECVPKTINFO, 1);
    EXPECT("tcpu", tcpu, IPPROTO_TCP, TCP_NODELAY, 1);
    EXPECT("tcpu", tcpu, SOL_SOCKET, SO_KEEPALIVE, 1);
    EXPECT("tcpb", tcpb, SOL_SOCKET, SO_ACCEPTCONN, 0);

    /* Addresses. */
    struct sockaddr_in6 got6;
    len = sizeof got6;
    if (getsockname(tcpb, (struct sockaddr *)&got6, &len) != 0 || memcmp(&got6.sin6_addr, &ab.sin6_addr, 16) != 0 || got6.sin6_port != ab.sin6_port)
        fail("tcpb: not bound to [::ffff:127.0.0.1]:%d", p4);
    struct sockaddr_in got4;
    len = sizeof got4;
    if (getpeername(udpc, (struct sockaddr *)&got4, &len) != 0 || got4.sin_port != a3.sin_port)
        fail("udpc: not connected to port %d", p3);
    len = sizeof got4;
    if (getsockname(tcpu, (struct sockaddr *)&got4, &len) != 0 || got4.sin_port != 0)
        fail("tcpu: bound");

    /* The test connected to both listeners after the restore. */
    serve_one("tcp4", tcp4);
    serve_one("tcp6", tcp6);

    /* Datagrams: udpc -> udp4 (connected), udp4 answers to its sender. */
    if (send(udpc, "ping", 4, 0) != 4)
        fail("udpc: send: %s", strerror(errno));
    struct sockaddr_in from;
    socklen_t fromlen = sizeof from;
    recv_expect("udp4", udp4, "ping", (struct sockaddr *)&from, &fromlen);
    if (from.sin_port != a4.sin_port)
        fail("udp4: datagram from port %d, not %d", ntohs(from.sin_port), p4);
    if (sendto(udp4, "pong", 4, 0, (struct sockaddr *)&from, fromlen) != 4)
        fail("udp4: sendto: %s", strerror(errno));
    recv_expect("udpc", udpc, "pong", NULL, NULL);
    if (sendto(udp6, "self", 4, 0, (struct sockaddr *)&a5, sizeof a5) != 4)
        fail("udp6: sendto: %s", strerror(errno));
    recv_expect("udp6", udp6, "self", NULL, NULL);
    printf("udp exchanged\n");
    succeed();
}
