/*
 * netserve: a small server for a tree in a network namespace of its own.
 *
 *   netserve PORT
 *
 * Listens on TCP 0.0.0.0:PORT and binds UDP 0.0.0.0:PORT, then prints
 * "READY <pid>". Each line a TCP client sends is answered on its connection
 * with "pong <n> <line>" (n counts the answers of that connection, so one
 * that lived through a dump and restore shows it kept its place); each UDP
 * datagram is answered with "upong <datagram>". Connections stay open until
 * the client closes them. Runs until killed.
 *
 * It also holds unix sockets of the namespace: a listener on the abstract
 * name "crust-netserve-PORT" and a connected pair; a TCP line "unix" sends a
 * byte through the pair, answered "pong <n> unix:<byte>".
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <stddef.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "workload.h"

#define MAXC 16

int main(int argc, char **argv)
{
    workload_init();
    if (argc != 2) {
        fprintf(stderr, "usage: netserve PORT\n");
        return 2;
    }
    int port = atoi(argv[1]);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_ANY) };
    int one = 1;
    int l = socket(AF_INET, SOCK_STREAM, 0);
    if (l < 0 || setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) || bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 8))
        die("tcp listener");
    int u = socket(AF_INET, SOCK_DGRAM, 0);
    if (u < 0 || bind(u, (struct sockaddr *)&a, sizeof a))
        die("udp socket");
    struct sockaddr_un ua = { .sun_family = AF_UNIX };
    int ulen = snprintf(ua.sun_path + 1, sizeof ua.sun_path - 1, "crust-netserve-%d", port);
    int ul = socket(AF_UNIX, SOCK_STREAM, 0);
    if (ul < 0 || bind(ul, (struct sockaddr *)&ua, offsetof(struct sockaddr_un, sun_path) + 1 + ulen) || listen(ul, 4))
        die("unix listener");
    int sp[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sp))
        die("socketpair");
    printf("READY %d\n", getpid());

    int conns[MAXC];
    int counts[MAXC];
    int n = 0;
    for (;;) {
        struct pollfd p[MAXC + 2];
        p[0] = (struct pollfd){ .fd = l, .events = POLLIN };
        p[1] = (struct pollfd){ .fd = u, .events = POLLIN };
        for (int i = 0; i < n; i++)
            p[i + 2] = (struct pollfd){ .fd = conns[i], .events = POLLIN };
        if (poll(p, n + 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            die("poll");
        }
        if (p[0].revents & POLLIN) {
            int c = accept(l, NULL, NULL);
            if (c >= 0 && n < MAXC) {
                conns[n] = c;
                counts[n++] = 0;
            } else if (c >= 0) {
                close(c);
            }
        }
        if (p[1].revents & POLLIN) {
            char buf[512], reply[600];
            struct sockaddr_in from;
            socklen_t fl = sizeof from;
            ssize_t r = recvfrom(u, buf, sizeof buf - 1, 0, (struct sockaddr *)&from, &fl);
            if (r > 0) {
                buf[r] = 0;
                int len = snprintf(reply, sizeof reply, "upong %s", buf);
                sendto(u, reply, len, 0, (struct sockaddr *)&from, fl);
            }
        }
        for (int i = n - 1; i >= 0; i--) {
            if (!(p[i + 2].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            char buf[512], reply[600];
            ssize_t r = read(conns[i], buf, sizeof buf - 1);
            if (r <= 0) {
                close(conns[i]);
                conns[i] = conns[n - 1];
                counts[i] = counts[n - 1];
                n--;
                continue;
            }
            buf[r] = 0;
            if (strcmp(buf, "unix\n") == 0) {
                char c = 'u', got = 0;
                if (write(sp[0], &c, 1) != 1 || read(sp[1], &got, 1) != 1)
                    die("unix pair");
                snprintf(buf, sizeof buf, "unix:%c\n", got);
            }
            int len = snprintf(reply, sizeof reply, "pong %d %s", ++counts[i], buf);
            if (write(conns[i], reply, len) != len)
                die("write");
        }
    }
}
