/*
 * locks: file locks of every kind crust saves, to check that a restored tree
 * holds them again, as they were, and can release them.
 *
 *   DIR/data (200 bytes), opened four times by the parent:
 *     fl: flock LOCK_EX (a write flock), shared with the child by fork
 *     px: POSIX locks: WRITE on bytes 0-9, READ on 20-29, WRITE from 100 to EOF
 *     ofd: OFD locks: WRITE on 40-49, READ on 60-69
 *     the child's own POSIX READ lock on 80-89, through its copy of px
 *   DIR/shared: flock LOCK_SH (a read flock), fd sh
 *
 * Usage: locks DIR. Prints "READY <pid> child=<pid>". On SIGUSR1 the parent
 * forks a checker, a process of its own with files of its own, which finds
 * every lock held by its owner (F_GETLK, F_OFD_GETLK, flock LOCK_NB), and
 * the gaps between them free; then the child and the parent release theirs,
 * and a second checker finds the files free. Prints "OK" or "FAIL <why>".
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <limits.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <unistd.h>

#include "workload.h"

static char data_path[PATH_MAX], shared_path[PATH_MAX];

/* One fcntl lock of `type` on [start, start+len) (len 0: to EOF) through fd. */
static int set_lock(int fd, int cmd, short type, off_t start, off_t len)
{
    struct flock fl = { .l_type = type, .l_whence = SEEK_SET, .l_start = start, .l_len = len };
    return fcntl(fd, cmd, &fl);
}

/* What F_GETLK (or F_OFD_GETLK) says of a `type` lock on [start, start+len)
 * wanted through fd: the conflicting lock, or l_type F_UNLCK. */
static struct flock probe(int fd, int cmd, short type, off_t start, off_t len)
{
    struct flock fl = { .l_type = type, .l_whence = SEEK_SET, .l_start = start, .l_len = len };
    if (fcntl(fd, cmd, &fl) != 0)
        fail("F_GETLK on bytes %lld+%lld: %s", (long long)start, (long long)len, strerror(errno));
    return fl;
}

static const char *type_name(short t)
{
    return t == F_RDLCK ? "READ" : t == F_WRLCK ? "WRITE" : t == F_UNLCK ? "none" : "?";
}

/* A write lock wanted on [start, start+len) meets a lock of `type` on
 * exactly [start, start+len) owned by `pid` (-1 for an OFD lock). */
static void expect_lock(int fd, off_t start, off_t len, short type, pid_t pid)
{
    struct flock got = probe(fd, F_GETLK, F_WRLCK, start, len);
    if (got.l_type != type || got.l_start != start || got.l_len != len || got.l_pid != pid)
        fail("bytes %lld+%lld: found a %s lock on %lld+%lld of %d, not a %s lock of %d", (long long)start, (long long)len,
             type_name(got.l_type), (long long)got.l_start, (long long)got.l_len, (int)got.l_pid, type_name(type), (int)pid);
    /* An OFD probe sees the same lock. */
    got = probe(fd, F_OFD_GETLK, F_WRLCK, start, len);
    if (got.l_type != type || got.l_pid != pid)
        fail("bytes %lld+%lld: F_OFD_GETLK found a %s lock of %d", (long long)start, (long long)len, type_name(got.l_type),
             (int)got.l_pid);
}

static void expect_free(int fd, short type, off_t start, off_t len)
{
    struct flock got = probe(fd, F_GETLK, type, start, len);
    if (got.l_type != F_UNLCK)
        fail("bytes %lld+%lld: a %s lock is in the way of a %s lock (%s lock on %lld+%lld of %d)", (long long)start,
             (long long)len, type_name(got.l_type), type_name(type), type_name(got.l_type), (long long)got.l_start,
             (long long)got.l_len, (int)got.l_pid);
}

/* flock(op | LOCK_NB) on a new open of path: 0 if granted (and released),
 * else the errno. */
static int try_flock(const char *path, int op)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        fail("open %s: %s", path, strerror(errno));
    int r = flock(fd, op | LOCK_NB) == 0 ? 0 : errno;
    close(fd);
    return r;
}

/* In a process of its own: every lock is held, as it was. */
static void check_held(pid_t parent, pid_t child)
{
    int fd = open(data_path, O_RDWR);
    if (fd < 0)
        fail("open %s: %s", data_path, strerror(errno));
    expect_lock(fd, 0, 10, F_WRLCK, parent);
    expect_lock(fd, 20, 10, F_RDLCK, parent);
    expect_lock(fd, 100, 0, F_WRLCK, parent);
    expect_lock(fd, 40, 10, F_WRLCK, -1);
    expect_lock(fd, 60, 10, F_RDLCK, -1);
    expect_lock(fd, 80, 10, F_RDLCK, child);
    /* Read locks let readers in; the gaps are free. */
    expect_free(fd, F_RDLCK, 20, 10);
    expect_free(fd, F_RDLCK, 60, 10);
    expect_free(fd, F_RDLCK, 80, 10);
    expect_free(fd, F_WRLCK, 10, 10);
    expect_free(fd, F_WRLCK, 30, 10);
    expect_free(fd, F_WRLCK, 50, 10);
    expect_free(fd, F_WRLCK, 70, 10);
    expect_free(fd, F_WRLCK, 90, 10);
    close(fd);
    int r;
    if ((r = try_flock(data_path, LOCK_SH)) != EWOULDBLOCK)
        fail("flock LOCK_SH on %s: %s, not EWOULDBLOCK (its LOCK_EX is not held)", data_path, r ? strerror(r) : "granted");
    if ((r = try_flock(shared_path, LOCK_EX)) != EWOULDBLOCK)
        fail("flock LOCK_EX on %s: %s, not EWOULDBLOCK (its LOCK_SH is not held)", shared_path, r ? strerror(r) : "granted");
    if ((r = try_flock(shared_path, LOCK_SH)) != 0)
        fail("flock LOCK_SH on %s: %s (a LOCK_EX is held?)", shared_path, strerror(r));
}

/* In a process of its own: nothing is locked any more. */
static void check_released(void)
{
    int fd = open(data_path, O_RDWR);
    if (fd < 0)
        fail("open %s: %s", data_path, strerror(errno));
    expect_free(fd, F_WRLCK, 0, 0);
    struct flock got = probe(fd, F_OFD_GETLK, F_WRLCK, 0, 0);
    if (got.l_type != F_UNLCK)
        fail("an OFD probe still meets a %s lock on %lld+%lld", type_name(got.l_type), (long long)got.l_start, (long long)got.l_len);
    close(fd);
    int r;
    if ((r = try_flock(data_path, LOCK_EX)) != 0 || (r = try_flock(shared_path, LOCK_EX)) != 0)
        fail("a flock is still held after release: %s", strerror(r));
}

/* Runs `check` in a new process; fails if it did. */
static void in_checker(void (*check)(pid_t, pid_t), pid_t parent, pid_t child)
{
    pid_t c = fork();
    if (c < 0)
        fail("fork: %s", strerror(errno));
    if (c == 0) {
        check(parent, child);
        _exit(0);
    }
    int status;
    if (waitpid(c, &status, 0) != c || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        exit(1); /* the checker said why */
}

static void check_released_of(pid_t parent, pid_t child)
{
    (void)parent, (void)child;
    check_released();
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: locks DIR\n");
        return 2;
    }
    workload_init();
    snprintf(data_path, sizeof data_path, "%s/data", argv[1]);
    snprintf(shared_path, sizeof shared_path, "%s/shared", argv[1]);
    int fl = open(data_path, O_RDWR | O_CREAT | O_EXCL, 0600);
    int sh = open(shared_path, O_RDONLY | O_CREAT | O_EXCL, 0600);
    int px = open(data_path, O_RDWR);
    int ofd = open(data_path, O_RDWR);
    if (fl < 0 || sh < 0 || px < 0 || ofd < 0)
        die("open");
    char zeros[200] = { 0 };
    if (write(fl, zeros, sizeof zeros) != sizeof zeros)
        die("write");
    if (flock(fl, LOCK_EX) || flock(sh, LOCK_SH))
        die("flock");
    if (set_lock(px, F_SETLK, F_WRLCK, 0, 10) || set_lock(px, F_SETLK, F_RDLCK, 20, 10) ||
        set_lock(px, F_SETLK, F_WRLCK, 100, 0))
        die("F_SETLK");
    if (set_lock(ofd, F_OFD_SETLK, F_WRLCK, 40, 10) || set_lock(ofd, F_OFD_SETLK, F_RDLCK, 60, 10))
        die("F_OFD_SETLK");

    int hold[2];
    if (pipe(hold))
        die("pipe");
    pid_t child = fork();
    if (child < 0)
        die("fork");
    if (child == 0) {
        close(hold[0]);
        if (set_lock(px, F_SETLK, F_RDLCK, 80, 10))
            die("child F_SETLK");
        if (write(hold[1], "x", 1) != 1)
            die("child write hold");
        close(hold[1]);
        wait_usr1();
        if (set_lock(px, F_SETLK, F_UNLCK, 0, 0))
            _exit(1);
        _exit(0);
    }
    close(hold[1]);
    char c;
    if (read(hold[0], &c, 1) != 1)
        die("read hold");
    close(hold[0]);
    printf("READY %d child=%d\n", (int)getpid(), (int)child);
    wait_usr1();

    in_checker(check_held, getpid(), child);
    kill(child, SIGUSR1);
    int status;
    if (waitpid(child, &status, 0) != child || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fail("the child did not release its lock and exit cleanly");
    if (flock(fl, LOCK_UN) || flock(sh, LOCK_UN))
        fail("flock LOCK_UN: %s", strerror(errno));
    if (set_lock(px, F_SETLK, F_UNLCK, 0, 0) || set_lock(ofd, F_OFD_SETLK, F_UNLCK, 0, 0))
        fail("unlocking: %s", strerror(errno));
    in_checker(check_released_of, 0, 0);
    succeed();
}
