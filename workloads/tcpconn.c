/*
 * tcpconn: an established TCP connection over loopback with bytes queued,
 * unread, both ways, to check it comes back whole.
 *
 *   tcpconn [ADDR:]PORT pair|server N M open|closed [flock:PATH|mem:MIB]
 *
 * ADDR: the IPv4 address to listen on (default 127.0.0.1; a service
 *   address that moves with the server in tests/migrate_clients.rs).
 * flock:PATH: the root also holds a flock on PATH (a dump without
 *   --file-locks refuses it, after the connections are locked).
 * mem:MIB: the root also fills MIB MiB of memory (a dump that takes a while).
 *
 * pair: the process listens on 127.0.0.1:PORT, forks a child that connects. Each end writes
 *   N bytes of its stream and reads nothing. Prints "READY <pid> child=<pid>".
 * server: the process listens on 127.0.0.1:PORT, prints "READY <pid>", and
 *   accepts one connection (the test's client, outside the tree); it writes
 *   N bytes of its stream, reads nothing, and prints "CONNECTED".
 *
 * The listener stays open, on the port of the connection's server end.
 *
 * Streams: the byte at offset i of the server's stream is down(i), of the
 * client's up(i); any byte lost, repeated or out of order shows.
 *
 * On SIGUSR1 (open): each end of the tree (the child woken by SIGUSR1 too)
 * writes M more bytes while it reads the other's N + M, checking each; then
 * shuts its writing side down and reads until EOF (no reset). The parent
 * prints "OK" or "FAIL <why>" (the child's result in its exit status).
 * On SIGUSR1 (closed): each end finds its socket closed: a read returns 0 or
 * fails, a write fails; "OK" if so.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "workload.h"

static unsigned char down(size_t i)
{
    return (unsigned char)(i * 7 + i / 251);
}

static unsigned char up(size_t i)
{
    return (unsigned char)(i * 13 + i / 241 + 1);
}

typedef unsigned char (*stream_fn)(size_t);

/* Writes bytes [from, to) of `mine`, blocking. */
static int write_stream(int fd, stream_fn mine, size_t from, size_t to)
{
    unsigned char buf[4096];
    while (from < to) {
        size_t n = to - from < sizeof buf ? to - from : sizeof buf;
        for (size_t i = 0; i < n; i++)
            buf[i] = mine(from + i);
        ssize_t w = write(fd, buf, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        from += (size_t)w;
    }
    return 0;
}

/* Writes [sent, total) of `mine` while reading `want` bytes of `theirs`
 * (checked); then shuts writing down and expects EOF. 0, or -1 with `why`. */
static int exchange(int fd, stream_fn mine, size_t sent, size_t total, stream_fn theirs, size_t want, char *why, size_t whylen)
{
    size_t got = 0;
    fcntl(fd, F_SETFL, O_NONBLOCK);
    int shut = 0;
    while (got < want || !shut) {
        if (sent == total && !shut) {
            if (shutdown(fd, SHUT_WR) != 0) {
                snprintf(why, whylen, "shutdown: %s", strerror(errno));
                return -1;
            }
            shut = 1;
        }
        struct pollfd p = { fd, POLLIN | (sent < total ? POLLOUT : 0), 0 };
        if (poll(&p, 1, 20000) <= 0) {
            snprintf(why, whylen, "stalled: %zu of %zu read, %zu of %zu written", got, want, sent, total);
            return -1;
        }
        if (sent < total && (p.revents & POLLOUT)) {
            unsigned char buf[4096];
            size_t n = total - sent < sizeof buf ? total - sent : sizeof buf;
            for (size_t i = 0; i < n; i++)
                buf[i] = mine(sent + i);
            ssize_t w = write(fd, buf, n);
            if (w < 0 && errno != EAGAIN && errno != EINTR) {
                snprintf(why, whylen, "write at %zu: %s", sent, strerror(errno));
                return -1;
            }
            if (w > 0)
                sent += (size_t)w;
        }
        if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
            unsigned char buf[4096];
            ssize_t r = read(fd, buf, sizeof buf);
            if (r < 0 && (errno == EAGAIN || errno == EINTR))
                continue;
            if (r < 0) {
                snprintf(why, whylen, "read at %zu: %s", got, strerror(errno));
                return -1;
            }
            if (r == 0) {
                if (got < want) {
                    snprintf(why, whylen, "EOF after %zu of %zu bytes", got, want);
                    return -1;
                }
                continue;
            }
            for (ssize_t i = 0; i < r; i++) {
                if (got + (size_t)i >= want) {
                    snprintf(why, whylen, "more than the %zu bytes expected", want);
                    return -1;
                }
                if (buf[i] != theirs(got + (size_t)i)) {
                    snprintf(why, whylen, "byte %zu is %u, not %u", got + (size_t)i, buf[i], theirs(got + (size_t)i));
                    return -1;
                }
            }
            got += (size_t)r;
        }
    }
    /* Our side is shut and everything came: the other side ends too. */
    fcntl(fd, F_SETFL, 0);
    struct timeval tv = { 20, 0 };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    unsigned char c;
    ssize_t r = read(fd, &c, 1);
    if (r != 0) {
        snprintf(why, whylen, "no EOF at the end: %zd (%s)", r, r < 0 ? strerror(errno) : "a byte too many");
        return -1;
    }
    return 0;
}

/* The socket is closed: a read gives 0 or an error, a write an error. */
static int check_closed(int fd, char *why, size_t whylen)
{
    signal(SIGPIPE, SIG_IGN);
    fcntl(fd, F_SETFL, O_NONBLOCK);
    unsigned char c;
    ssize_t r = read(fd, &c, 1);
    if (r > 0 || (r < 0 && errno == EAGAIN)) {
        snprintf(why, whylen, "a read gave %zd (%s): still open", r, r < 0 ? strerror(errno) : "a byte");
        return -1;
    }
    if (write(fd, "x", 1) >= 0) {
        snprintf(why, whylen, "a write succeeded");
        return -1;
    }
    return 0;
}

static int side(int fd, int is_server, size_t n, size_t m, int closed, char *why, size_t whylen)
{
    if (closed)
        return check_closed(fd, why, whylen);
    return exchange(fd, is_server ? down : up, n, n + m, is_server ? up : down, n + m, why, whylen);
}

int main(int argc, char **argv)
{
    if (argc != 6 && argc != 7)
        fail("usage: tcpconn [ADDR:]PORT pair|server N M open|closed [flock:PATH|mem:MIB]");
    workload_init();
    char *colon = strchr(argv[1], ':');
    int port = atoi(colon ? colon + 1 : argv[1]);
    int pair = strcmp(argv[2], "pair") == 0;
    size_t n = (size_t)atol(argv[3]), m = (size_t)atol(argv[4]);
    int closed = strcmp(argv[5], "closed") == 0;
    int lsn = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(lsn, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (colon) {
        *colon = 0;
        if (inet_pton(AF_INET, argv[1], &a.sin_addr) != 1)
            fail("bad address %s", argv[1]);
    }
    if (bind(lsn, (struct sockaddr *)&a, sizeof a) || listen(lsn, 4))
        die("listen");
    char why[256] = "";
    if (argc == 7 && strncmp(argv[6], "flock:", 6) == 0) {
        int lf = open(argv[6] + 6, O_CREAT | O_RDWR, 0600);
        if (lf < 0 || flock(lf, LOCK_EX))
            die("flock");
    } else if (argc == 7 && strncmp(argv[6], "mem:", 4) == 0) {
        size_t len = (size_t)atol(argv[6] + 4) << 20;
        unsigned char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED)
            die("mmap");
        for (size_t i = 0; i < len; i += 4096)
            p[i] = (unsigned char)(i >> 12) | 1;
    }
    if (!pair) {
        printf("READY %d\n", getpid());
        int c = accept(lsn, NULL, NULL);
        if (c < 0)
            die("accept");
        if (write_stream(c, down, 0, n))
            die("write");
        printf("CONNECTED\n");
        wait_usr1();
        if (side(c, 1, n, m, closed, why, sizeof why))
            fail("server: %s", why);
        printf("OK\n");
        return 0;
    }
    pid_t child = fork();
    if (child < 0)
        die("fork");
    if (child == 0) {
        close(lsn);
        int c = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(c, (struct sockaddr *)&a, sizeof a))
            die("connect");
        if (write_stream(c, up, 0, n))
            die("client write");
        wait_usr1();
        int r = side(c, 0, n, m, closed, why, sizeof why);
        if (r)
            fprintf(stderr, "client: %s\n", why);
        _exit(r ? 1 : 0);
    }
    int s = accept(lsn, NULL, NULL);
    if (s < 0)
        die("accept");
    if (write_stream(s, down, 0, n))
        die("write");
    /* The child's bytes are queued here once it has written them all. */
    for (int i = 0; i < 500; i++) {
        int q = 0;
        if (ioctl(s, FIONREAD, &q) == 0 && (size_t)q >= (n < 65536 ? n : 65536))
            break;
        sleep_ms(10);
    }
    printf("READY %d child=%d\n", getpid(), child);
    wait_usr1();
    kill(child, SIGUSR1);
    int r = side(s, 1, n, m, closed, why, sizeof why);
    int status;
    if (waitpid(child, &status, 0) != child)
        fail("waitpid");
    if (r)
        fail("server: %s", why);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fail("client failed (status %d)", status);
    printf("OK\n");
    return 0;
}
