/*
 * manyconns: N established TCP connections over loopback inside the tree:
 * the process listens on 127.0.0.1:PORT, forks a child that opens N
 * connections to it, and accepts them all. Both then idle.
 *
 *   manyconns PORT N
 *
 * Prints "READY <pid> child=<pid>" once every connection is accepted. On
 * SIGUSR1 (the child gets it too) each end sends one byte on every
 * connection and reads the other end's, checking it: "OK" once all came
 * back (the child's result in its exit status), else "FAIL <why>".
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include "workload.h"

static int exchange(int *fds, int n, char mine, char theirs)
{
    for (int i = 0; i < n; i++)
        if (write(fds[i], &mine, 1) != 1)
            return -1;
    for (int i = 0; i < n; i++) {
        char c;
        struct pollfd p = { fds[i], POLLIN, 0 };
        int r;
        while ((r = poll(&p, 1, 30000)) < 0 && errno == EINTR)
            ;
        if (r != 1 || read(fds[i], &c, 1) != 1 || c != theirs)
            return i;
    }
    return n;
}

int main(int argc, char **argv)
{
    workload_init();
    if (argc != 3)
        die("usage: manyconns PORT N");
    int port = atoi(argv[1]), n = atoi(argv[2]);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)n + 64) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
            die("setrlimit");
    }
    int *fds = calloc(n, sizeof *fds);
    int l = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    if (bind(l, (struct sockaddr *)&a, sizeof a) != 0 || listen(l, 4096) != 0)
        die("listen");
    pid_t child = fork();
    if (child < 0)
        die("fork");
    if (child == 0) {
        close(l);
        for (int i = 0; i < n; i++) {
            fds[i] = socket(AF_INET, SOCK_STREAM, 0);
            if (fds[i] < 0 || connect(fds[i], (struct sockaddr *)&a, sizeof a) != 0)
                die("connect");
        }
        while (!got_usr1)
            pause();
        return exchange(fds, n, 'c', 's') == n ? 0 : 1;
    }
    for (int i = 0; i < n; i++)
        if ((fds[i] = accept(l, NULL, NULL)) < 0)
            die("accept");
    printf("READY %d child=%d\n", getpid(), child);
    while (!got_usr1)
        pause();
    kill(child, SIGUSR1);
    int got = exchange(fds, n, 's', 'c');
    int st = 0;
    waitpid(child, &st, 0);
    if (got != n)
        printf("FAIL connection %d of %d did not answer\n", got, n);
    else if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
        printf("FAIL the child's connections did not answer (status %#x)\n", st);
    else
        printf("OK\n");
    return got == n && WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : 1;
}
