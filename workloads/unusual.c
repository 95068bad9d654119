/*
 * unusual: a process in a state crust refuses to dump (it could not restore
 * it yet), to check the refusal leaves it running as it was.
 *
 *   unusual seccomp-strict  in seccomp strict mode, waits in read(2) (crust
 *                         could run no syscall in it)
 *   unusual leader-exit   its main thread exits; a second thread runs on
 *   unusual semaphore     holds an eventfd in semaphore mode
 *   unusual epoll-closed  an epoll watches a pipe by an fd since closed
 *                         (the pipe lives on in a child only)
 *   unusual unix-waiting-bytes  listens on an abstract unix socket name; a
 *                         client waiting to be accepted has sent bytes
 *   unusual fd-in-flight  a unix socket pair carries an eventfd not received yet
 *                         (crust takes regular files, pipes and unix sockets in flight)
 *   unusual sysv-shm      has a System V shared memory segment attached
 *   unusual inotify-queued  an inotify instance with an event not read yet
 *   unusual pidfd-outside   holds a pidfd of its parent, outside the tree
 *   unusual kmsg          holds /dev/kmsg (character device 1:11)
 *   unusual flock|posix-lock|ofd-lock|lease
 *                         holds a file lock (or lease) on a deleted file
 *   unusual foreign-cpu-timer  has a POSIX timer on its parent's CPU-time clock
 *   unusual thread-cpu-timer   has a CLOCK_THREAD_CPUTIME_ID timer and two threads
 *   unusual timer-overrun      took its 1 ms timer's signal late (sigwaitinfo
 *                         after 50 ms blocked): timer_getoverrun is not 0
 *   unusual mlock|dontfork|dontdump|wipeonfork|hugepage|nohugepage|
 *           mergeable|droppable|sequential|random
 *                         has a mapping with that flag (mlock, madvise, MAP_DROPPABLE)
 *   unusual async         has a pipe signalling it (O_ASYNC, F_SETOWN, F_SETSIG SIGUSR2)
 *   unusual thp-disable   has PR_SET_THP_DISABLE set
 *   unusual thp-advised   has PR_SET_THP_DISABLE set except where madvised (6.18)
 *   unusual deadline      runs under SCHED_DEADLINE
 *   unusual membarrier    registered for private expedited membarriers
 *
 * Prints "READY <pid>" once in that state; on SIGUSR1 prints "OK", exits 0.
 */
#define _GNU_SOURCE
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <fcntl.h>
#include <signal.h>
#include <linux/membarrier.h>
#include <sys/epoll.h>
#include <sys/file.h>
#include <sys/syscall.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <sys/inotify.h>
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

/* A second thread that only sleeps (and allocates nothing). */
static void *sleeper(void *arg)
{
    (void)arg;
    for (;;)
        pause();
    return NULL;
}

static int async_pipe[2];
static volatile sig_atomic_t sigio_fd = -1;

static void on_sigio(int sig, siginfo_t *si, void *ctx)
{
    (void)sig, (void)ctx;
    sigio_fd = si->si_fd;
}

/* The pipe still signals its owner, by SIGUSR2 with its fd, when written. */
static void check_async(void)
{
    if (fcntl(async_pipe[0], F_GETOWN) != getpid() || fcntl(async_pipe[0], F_GETSIG) != SIGUSR2)
        fail("owner %d, signal %d", fcntl(async_pipe[0], F_GETOWN), fcntl(async_pipe[0], F_GETSIG));
    if (!(fcntl(async_pipe[0], F_GETFL) & O_ASYNC))
        fail("O_ASYNC is gone");
    if (write(async_pipe[1], "x", 1) != 1)
        die("write");
    for (int i = 0; i < 100 && sigio_fd < 0; i++)
        sleep_ms(10);
    if (sigio_fd != async_pipe[0])
        fail("no SIGUSR2 for fd %d (got %d)", async_pipe[0], (int)sigio_fd);
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
        fprintf(stderr, "usage: unusual seccomp-strict|leader-exit|semaphore|epoll-closed|unix-waiting-bytes|fd-in-flight|sysv-shm|kmsg|...\n");
        return 2;
    }
    if (strcmp(argv[1], "seccomp-strict") == 0) {
        /* Only read, write, exit and sigreturn are allowed from here: the
         * SIGUSR1 handler ends the read (no SA_RESTART). */
        int p[2];
        if (pipe(p) != 0)
            die("pipe");
        /* READY only once in strict mode (a dump before that would rightly
         * succeed): written with write(2), the one way out strict mode leaves. */
        char ready[32];
        int n = snprintf(ready, sizeof ready, "READY %d\n", (int)getpid());
        fflush(stdout);
        if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_STRICT) != 0)
            die("seccomp strict");
        (void)!write(1, ready, (size_t)n);
        char c;
        while (!got_usr1)
            (void)!read(p[0], &c, 1);
        (void)!write(1, "OK\n", 3);
        syscall(SYS_exit, 0);
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
        if (e < 0 || pipe(p) != 0 || epoll_ctl(e, EPOLL_CTL_ADD, p[0], &ev) != 0)
            die("epoll");
        pid_t child = fork();
        if (child < 0)
            die("fork");
        if (child == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            for (;;)
                pause();
        }
        close(p[0]);
        run_on(NULL);
    }
    if (!strcmp(argv[1], "flock") || !strcmp(argv[1], "posix-lock") || !strcmp(argv[1], "ofd-lock") || !strcmp(argv[1], "lease")) {
        char path[] = "/tmp/crust-lock-XXXXXX";
        int f = mkstemp(path);
        if (f < 0 || unlink(path) || write(f, "data", 4) != 4)
            die("mkstemp");
        struct flock l = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 2 };
        int r = !strcmp(argv[1], "flock") ? flock(f, LOCK_EX)
              : !strcmp(argv[1], "posix-lock") ? fcntl(f, F_SETLK, &l)
              : !strcmp(argv[1], "ofd-lock") ? fcntl(f, F_OFD_SETLK, &l)
              : fcntl(f, F_SETLEASE, F_WRLCK);
        if (r)
            die(argv[1]);
        run_on(NULL);
    }
    if (strcmp(argv[1], "foreign-cpu-timer") == 0) {
        timer_t t;
        clockid_t parent;
        struct sigevent sev = { .sigev_notify = SIGEV_SIGNAL, .sigev_signo = SIGUSR2 };
        struct itimerspec its = { .it_value = { 1000, 0 } };
        signal(SIGUSR2, SIG_IGN);
        if (clock_getcpuclockid(getppid(), &parent) || timer_create(parent, &sev, &t) || timer_settime(t, 0, &its, NULL))
            die("timer_create");
        run_on(NULL);
    }
    if (strcmp(argv[1], "thread-cpu-timer") == 0) {
        timer_t t;
        pthread_t other;
        struct sigevent sev = { .sigev_notify = SIGEV_NONE };
        struct itimerspec its = { .it_value = { 1000, 0 } };
        if (timer_create(CLOCK_THREAD_CPUTIME_ID, &sev, &t) || timer_settime(t, 0, &its, NULL))
            die("timer_create");
        if (pthread_create(&other, NULL, sleeper, NULL) != 0)
            die("pthread_create");
        run_on(NULL);
    }
    if (strcmp(argv[1], "timer-overrun") == 0) {
        timer_t t;
        sigset_t usr2;
        siginfo_t si;
        sigemptyset(&usr2);
        sigaddset(&usr2, SIGUSR2);
        sigprocmask(SIG_BLOCK, &usr2, NULL);
        struct sigevent sev = { .sigev_notify = SIGEV_SIGNAL, .sigev_signo = SIGUSR2 };
        struct itimerspec its = { .it_value = { 0, 1000000 }, .it_interval = { 0, 1000000 } };
        if (timer_create(CLOCK_MONOTONIC, &sev, &t) || timer_settime(t, 0, &its, NULL))
            die("timer_create");
        sleep_ms_full(50);
        if (sigwaitinfo(&usr2, &si) != SIGUSR2 || timer_getoverrun(t) < 1)
            die("sigwaitinfo");
        run_on(NULL);
    }
    if (strcmp(argv[1], "async") == 0) {
        struct sigaction sa = { .sa_sigaction = on_sigio, .sa_flags = SA_SIGINFO };
        if (sigaction(SIGUSR2, &sa, NULL) || pipe(async_pipe) || fcntl(async_pipe[0], F_SETOWN, getpid()) ||
            fcntl(async_pipe[0], F_SETSIG, SIGUSR2) || fcntl(async_pipe[0], F_SETFL, O_ASYNC | O_NONBLOCK))
            die("O_ASYNC pipe");
        check = check_async;
        run_on(NULL);
    }
    if (strcmp(argv[1], "thp-disable") == 0 || strcmp(argv[1], "thp-advised") == 0) {
        /* PR_THP_DISABLE_EXCEPT_ADVISED is 1 << 1. */
        if (prctl(PR_SET_THP_DISABLE, 1, strcmp(argv[1], "thp-advised") == 0 ? 2 : 0, 0, 0))
            die("PR_SET_THP_DISABLE");
        run_on(NULL);
    }
    if (strcmp(argv[1], "deadline") == 0) {
        struct { uint32_t size, policy; uint64_t flags; int32_t nice; uint32_t prio; uint64_t runtime, deadline, period; } a = {
            .size = 48, .policy = 6 /* SCHED_DEADLINE */, .runtime = 1000000, .deadline = 100000000, .period = 100000000 };
        if (syscall(SYS_sched_setattr, 0, &a, 0))
            die("sched_setattr");
        run_on(NULL);
    }
    if (strcmp(argv[1], "membarrier") == 0) {
        if (syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0))
            die("membarrier");
        run_on(NULL);
    }
    static const struct { const char *mode; int advice; } advices[] = {
        { "mlock", -1 }, { "droppable", -2 },
        { "dontfork", MADV_DONTFORK }, { "dontdump", MADV_DONTDUMP }, { "wipeonfork", MADV_WIPEONFORK },
        { "hugepage", MADV_HUGEPAGE }, { "nohugepage", MADV_NOHUGEPAGE }, { "mergeable", MADV_MERGEABLE },
        { "sequential", MADV_SEQUENTIAL }, { "random", MADV_RANDOM },
    };
    for (size_t i = 0; i < sizeof advices / sizeof advices[0]; i++) {
        if (strcmp(argv[1], advices[i].mode))
            continue;
        int a = advices[i].advice;
        size_t len = 4 << 20;
        char *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | (a == -2 ? 0x08 /* MAP_DROPPABLE */ : MAP_PRIVATE), -1, 0);
        if (m == MAP_FAILED)
            die("mmap");
        m[0] = 1;
        if (a == -1 ? mlock(m, 4096) : a == -2 ? 0 : madvise(m, len, a))
            die(argv[1]);
        run_on(NULL);
    }
    if (strcmp(argv[1], "sysv-shm") == 0) {
        int id = shmget(IPC_PRIVATE, 4096, IPC_CREAT | 0600);
        char *p = id < 0 ? (char *)-1 : shmat(id, NULL, 0);
        /* Removed at once: it lives as long as it is attached. */
        if (p == (char *)-1 || shmctl(id, IPC_RMID, NULL) != 0)
            die("shmget");
        strcpy(p, "data");
        run_on(NULL);
    }
    if (strcmp(argv[1], "inotify-queued") == 0) {
        char dir[] = "/tmp/crust-test-inotify-XXXXXX";
        int in = inotify_init1(0);
        if (!mkdtemp(dir) || in < 0 || inotify_add_watch(in, dir, IN_DELETE_SELF) != 1 || rmdir(dir) != 0)
            die("inotify");
        run_on(NULL);
    }
    if (strcmp(argv[1], "pidfd-outside") == 0) {
        if (syscall(SYS_pidfd_open, getppid(), 0) < 0)
            die("pidfd_open");
        run_on(NULL);
    }
    if (strcmp(argv[1], "kmsg") == 0) {
        if (open("/dev/kmsg", O_RDONLY) < 0)
            die("/dev/kmsg");
        run_on(NULL);
    }
    if (strcmp(argv[1], "unix-waiting-bytes") == 0) {
        struct sockaddr_un a = { .sun_family = AF_UNIX };
        int n = snprintf(a.sun_path + 1, sizeof a.sun_path - 1, "crust-test-%d", (int)getpid());
        socklen_t len = (socklen_t)(sizeof a.sun_family + 1 + n);
        int s = socket(AF_UNIX, SOCK_STREAM, 0), c = socket(AF_UNIX, SOCK_STREAM, 0);
        if (s < 0 || c < 0 || bind(s, (struct sockaddr *)&a, len) || listen(s, 1) ||
            connect(c, (struct sockaddr *)&a, len) || write(c, "hi", 2) != 2)
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
        int passed = eventfd(0, 0);
        if (passed < 0)
            die("eventfd");
        memcpy(CMSG_DATA(c), &passed, sizeof passed);
        if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) || sendmsg(sv[0], &m.msg, 0) != 1)
            die("sendmsg");
        run_on(NULL);
    }
    fprintf(stderr, "unknown mode %s\n", argv[1]);
    return 2;
}
