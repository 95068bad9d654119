/*
 * unusual: a process in a state crust refuses to dump (it could not restore
 * it yet), to check the refusal leaves it running as it was.
 *
 *   unusual seccomp       installs a seccomp filter (allowing everything)
 *   unusual leader-exit   its main thread exits; a second thread runs on
 *   unusual semaphore     holds an eventfd in semaphore mode
 *   unusual epoll-closed  an epoll watches a pipe by an fd since closed
 *                         (the pipe lives on in a dup)
 *   unusual unix-listening  listens on an abstract unix socket name
 *   unusual fd-in-flight  a unix socket pair carries an fd not received yet
 *   unusual epoll-reused  an epoll watches an eventfd by an fd number that
 *                         another eventfd took since (the first lives on)
 *   unusual memfd         holds a memfd
 *
 * Prints "READY <pid>" once in that state; on SIGUSR1 prints "OK", exits 0.
 */
#define _GNU_SOURCE
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "workload.h"

/* Checks, after SIGUSR1, that the state is still what it was (or NULL). */
static void (*check)(void);

static void *run_on(void *arg)
{
    (void)arg;
    printf("READY %d\n", (int)getpid());
    wait_usr1();
    if (check)
        check();
    succeed();
}

static int in_flight[2];

/* One byte, with room for one passed fd, as sendmsg and recvmsg take it. */
struct one_byte {
    char byte;
    struct iovec iov;
    union {
        struct cmsghdr h;
        char buf[CMSG_SPACE(sizeof(int))];
    } control;
    struct msghdr msg;
};

static void one_byte_init(struct one_byte *m, char byte)
{
    memset(m, 0, sizeof *m);
    m->byte = byte;
    m->iov = (struct iovec){ .iov_base = &m->byte, .iov_len = 1 };
    m->msg = (struct msghdr){ .msg_iov = &m->iov, .msg_iovlen = 1, .msg_control = m->control.buf, .msg_controllen = sizeof m->control.buf };
}

/* The byte and the fd sent with it are still queued, and nobody left a peek
 * offset on the socket. */
static void check_in_flight(void)
{
    int off = 0;
    socklen_t len = sizeof off;
    if (getsockopt(in_flight[1], SOL_SOCKET, SO_PEEK_OFF, &off, &len) || off != -1)
        fail("a peek offset %d was left on the socket", off);
    struct one_byte m;
    one_byte_init(&m, 0);
    if (recvmsg(in_flight[1], &m.msg, MSG_DONTWAIT) != 1 || m.byte != 'x')
        fail("the queued byte is gone");
    struct cmsghdr *c = CMSG_FIRSTHDR(&m.msg);
    if (!c || c->cmsg_type != SCM_RIGHTS)
        fail("the fd in flight is gone");
}

int main(int argc, char **argv)
{
    workload_init();
    if (argc != 2) {
        fprintf(stderr, "usage: unusual seccomp|leader-exit|semaphore|epoll-closed|unix-listening|fd-in-flight|epoll-reused|memfd\n");
        return 2;
    }
    if (strcmp(argv[1], "seccomp") == 0) {
        struct sock_filter allow = BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
        struct sock_fprog prog = { .len = 1, .filter = &allow };
        if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0)
            die("seccomp");
        run_on(NULL);
    }
    if (strcmp(argv[1], "leader-exit") == 0) {
        pthread_t t;
        if (pthread_create(&t, NULL, run_on, NULL) != 0)
            die("pthread_create");
        pthread_exit(NULL);
    }
    if (strcmp(argv[1], "semaphore") == 0) {
        if (eventfd(3, EFD_SEMAPHORE) < 0)
            die("eventfd");
        run_on(NULL);
    }
    if (strcmp(argv[1], "epoll-closed") == 0) {
        int p[2];
        int e = epoll_create1(0);
        struct epoll_event ev = { .events = EPOLLIN };
        if (e < 0 || pipe(p) != 0 || epoll_ctl(e, EPOLL_CTL_ADD, p[0], &ev) != 0 || dup(p[0]) < 0)
            die("epoll");
        close(p[0]);
        run_on(NULL);
    }
    if (strcmp(argv[1], "epoll-reused") == 0) {
        int e = epoll_create1(0);
        int first = eventfd(0, 0);
        struct epoll_event ev = { .events = EPOLLIN };
        if (e < 0 || first < 0 || epoll_ctl(e, EPOLL_CTL_ADD, first, &ev) != 0 || dup(first) < 0)
            die("epoll");
        close(first);
        if (eventfd(0, 0) != first)
            die("the second eventfd did not take the first one's number");
        run_on(NULL);
    }
    if (strcmp(argv[1], "memfd") == 0) {
        int m = memfd_create("crust-test", 0);
        if (m < 0 || write(m, "data", 4) != 4)
            die("memfd_create");
        run_on(NULL);
    }
    if (strcmp(argv[1], "unix-listening") == 0) {
        struct sockaddr_un a = { .sun_family = AF_UNIX };
        int n = snprintf(a.sun_path + 1, sizeof a.sun_path - 1, "crust-test-%d", (int)getpid());
        int s = socket(AF_UNIX, SOCK_STREAM, 0);
        if (s < 0 || bind(s, (struct sockaddr *)&a, (socklen_t)(sizeof a.sun_family + 1 + n)) || listen(s, 1))
            die("unix socket");
        run_on(NULL);
    }
    if (strcmp(argv[1], "fd-in-flight") == 0) {
        int *sv = in_flight;
        check = check_in_flight;
        struct one_byte m;
        one_byte_init(&m, 'x');
        struct cmsghdr *c = CMSG_FIRSTHDR(&m.msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        int passed = 1;
        memcpy(CMSG_DATA(c), &passed, sizeof passed);
        if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) || sendmsg(sv[0], &m.msg, 0) != 1)
            die("sendmsg");
        run_on(NULL);
    }
    fprintf(stderr, "unknown mode %s\n", argv[1]);
    return 2;
}
