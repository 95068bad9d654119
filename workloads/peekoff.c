/*
 * peekoff: sockets with a peek offset (SO_PEEK_OFF) over queued data, for a
 * dump and restore. Usage: peekoff PORT (a free UDP port).
 *
 *   us   unix stream pair: "0123456789" queued on us[0], peek offset 4
 *   ud   unix datagram pair: "abc", "defgh" queued on ud[0], peek offset 5
 *        (past the first message, 2 into the second)
 *   uu   UDP bound to 127.0.0.1:PORT: "abcdef", "ghi" from uu_from,
 *        peek offset 3
 *   ue   unix stream pair, nothing queued, peek offset 0 on ue[0]
 *
 * Prints "READY", waits for SIGUSR1, then checks each offset, that a peek
 * starts there, and that the queues read whole from their start. Prints OK.
 */
#define _GNU_SOURCE
#include "workload.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

static void set_off(int fd, int off)
{
    if (setsockopt(fd, SOL_SOCKET, SO_PEEK_OFF, &off, sizeof off) != 0)
        die("SO_PEEK_OFF");
}

static void expect_off(const char *sock, int fd, int want)
{
    int v = -2;
    socklen_t len = sizeof v;
    if (getsockopt(fd, SOL_SOCKET, SO_PEEK_OFF, &v, &len) != 0 || v != want)
        fail("%s: peek offset %d, not %d", sock, v, want);
}

static void expect_read(const char *sock, int fd, int flags, const char *want)
{
    char buf[64];
    ssize_t n = recv(fd, buf, strlen(want), flags | MSG_DONTWAIT);
    if (n != (ssize_t)strlen(want) || memcmp(buf, want, n) != 0)
        fail("%s: %s gave %zd bytes \"%.*s\", not \"%s\"", sock, flags & MSG_PEEK ? "a peek" : "a read", n, (int)(n > 0 ? n : 0), buf, want);
}

int main(int argc, char **argv)
{
    workload_init();
    if (argc != 2) {
        fprintf(stderr, "usage: peekoff PORT\n");
        return 2;
    }
    int us[2], ud[2], ue[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, us) != 0 || socketpair(AF_UNIX, SOCK_DGRAM, 0, ud) != 0 || socketpair(AF_UNIX, SOCK_STREAM, 0, ue) != 0)
        die("socketpair");
    if (write(us[1], "0123456789", 10) != 10 || write(ud[1], "abc", 3) != 3 || write(ud[1], "defgh", 5) != 5)
        die("write");
    set_off(us[0], 4);
    set_off(ud[0], 5);
    set_off(ue[0], 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(atoi(argv[1])) };
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    int uu = socket(AF_INET, SOCK_DGRAM, 0), uu_from = socket(AF_INET, SOCK_DGRAM, 0);
    if (uu < 0 || uu_from < 0 || bind(uu, (struct sockaddr *)&a, sizeof a) != 0)
        die("uu");
    if (sendto(uu_from, "abcdef", 6, 0, (struct sockaddr *)&a, sizeof a) != 6 || sendto(uu_from, "ghi", 3, 0, (struct sockaddr *)&a, sizeof a) != 3)
        die("sendto");
    set_off(uu, 3);
    printf("READY\n");
    wait_usr1();

    expect_off("us", us[0], 4);
    expect_off("ud", ud[0], 5);
    expect_off("uu", uu, 3);
    expect_off("ue", ue[0], 0);
    expect_off("us[1]", us[1], -1);
    expect_read("us", us[0], MSG_PEEK, "456");
    expect_read("us", us[0], 0, "0123456789");
    expect_read("ud", ud[0], MSG_PEEK, "fgh");
    expect_read("ud", ud[0], 0, "abc");
    expect_read("ud", ud[0], 0, "defgh");
    expect_read("uu", uu, MSG_PEEK, "def");
    expect_read("uu", uu, 0, "abcdef");
    expect_read("uu", uu, 0, "ghi");
    printf("OK\n");
    return 0;
}
