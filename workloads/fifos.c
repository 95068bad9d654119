/*
 * fifos: named FIFOs, to check they come back open on their paths, with
 * their flags and what was queued in them.
 *
 *   DIR/fifo1: read end r (O_RDONLY | O_NONBLOCK) and write end w (O_WRONLY),
 *      buffer set to 128 KiB, BIG pattern bytes queued (more than the
 *      default 64 KiB buffer holds)
 *   DIR/fifo2: rw (O_RDWR), "rw queued" queued; a child holds it too, opened
 *      O_WRONLY on its own, and writes "from child" when told to
 *
 * Usage: fifos DIR (DIR/fifo1 and DIR/fifo2 are made; they must not exist).
 * Prints "READY <pid> child=<pid>". On SIGUSR1 the parent checks the fds are
 * still the FIFOs at the paths, their flags and buffer size, reads and checks
 * every queued byte, sends new bytes through fifo1, wakes the child
 * (SIGUSR1), which checks its fd and writes, and reads what it wrote; prints
 * "OK" or "FAIL".
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <limits.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "workload.h"

#define BIG 100000
#define PIPE_SIZE (128 * 1024)

static unsigned char pattern(size_t i)
{
    return (unsigned char)(i * 13 + i / 257);
}

/* Is fd open on the FIFO at path (same inode)? */
static int same_fifo(int fd, const char *path)
{
    struct stat a, b;
    return fstat(fd, &a) == 0 && stat(path, &b) == 0 && S_ISFIFO(a.st_mode) && a.st_dev == b.st_dev &&
           a.st_ino == b.st_ino;
}

/* Checks fd's access mode and O_NONBLOCK; a reason, or NULL. */
static const char *check_flags(int fd, int mode, int nonblock)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0)
        return "F_GETFL failed";
    if ((fl & O_ACCMODE) != mode)
        return "wrong access mode";
    if (!!(fl & O_NONBLOCK) != nonblock)
        return nonblock ? "O_NONBLOCK lost" : "O_NONBLOCK gained";
    return NULL;
}

/* Bytes waiting in the FIFO behind fd, or -1. */
static int queued(int fd)
{
    int n = -1;
    if (ioctl(fd, FIONREAD, &n) != 0)
        return -1;
    return n;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: fifos DIR\n");
        return 2;
    }
    workload_init();
    char p1[PATH_MAX], p2[PATH_MAX];
    snprintf(p1, sizeof p1, "%s/fifo1", argv[1]);
    snprintf(p2, sizeof p2, "%s/fifo2", argv[1]);
    if (mkfifo(p1, 0600) || mkfifo(p2, 0600))
        die("mkfifo");
    int r = open(p1, O_RDONLY | O_NONBLOCK);
    int w = r < 0 ? -1 : open(p1, O_WRONLY);
    int rw = open(p2, O_RDWR);
    if (r < 0 || w < 0 || rw < 0)
        die("open fifo");
    if (fcntl(w, F_SETPIPE_SZ, PIPE_SIZE) < PIPE_SIZE)
        die("F_SETPIPE_SZ");
    char buf[32];
    static unsigned char big[BIG];
    for (size_t i = 0; i < BIG; i++)
        big[i] = pattern(i);
    if (write(w, big, BIG) != BIG || write(rw, "rw queued", 9) != 9)
        die("write");

    int hold[2];
    if (pipe(hold))
        die("pipe");
    pid_t child = fork();
    if (child < 0)
        die("fork");
    if (child == 0) {
        close(r), close(w), close(rw), close(hold[0]);
        int cw = open(p2, O_WRONLY);
        if (cw < 0)
            die("child open");
        if (write(hold[1], "x", 1) != 1)
            die("child write hold");
        close(hold[1]);
        wait_usr1();
        if (!same_fifo(cw, p2) || check_flags(cw, O_WRONLY, 0))
            (void)!write(cw, "bad child!", 10);
        else
            (void)!write(cw, "from child", 10);
        _exit(0);
    }
    /* Once the child holds fifo2, and has closed its end of `hold` (EOF):
     * READY must not come while the child still holds that pipe, or the
     * test sees an fd that is gone by the dump. */
    close(hold[1]);
    if (read(hold[0], buf, 1) != 1 || read(hold[0], buf, 1) != 0)
        die("read hold");
    close(hold[0]);
    printf("READY %d child=%d\n", (int)getpid(), (int)child);
    wait_usr1();

    const char *why;
    if (!same_fifo(r, p1) || !same_fifo(w, p1))
        fail("r or w is not the FIFO at %s", p1);
    if (!same_fifo(rw, p2))
        fail("rw is not the FIFO at %s", p2);
    if ((why = check_flags(r, O_RDONLY, 1)))
        fail("r: %s", why);
    if ((why = check_flags(w, O_WRONLY, 0)))
        fail("w: %s", why);
    if ((why = check_flags(rw, O_RDWR, 0)))
        fail("rw: %s", why);
    int sz = fcntl(r, F_GETPIPE_SZ);
    if (sz != PIPE_SIZE)
        fail("fifo1 has a %d byte buffer, not %d", sz, PIPE_SIZE);

    int n = queued(r);
    if (n != BIG)
        fail("fifo1 holds %d bytes, not %d", n, BIG);
    static unsigned char got[BIG + 1];
    if (read(r, got, sizeof got) != BIG)
        fail("fifo1: short read");
    for (size_t i = 0; i < BIG; i++)
        if (got[i] != pattern(i))
            fail("fifo1: byte %zu differs", i);
    if (read(r, got, 1) != -1 || errno != EAGAIN)
        fail("fifo1 is not empty and non-blocking after its bytes");
    if (write(w, "new", 3) != 3 || read(r, buf, sizeof buf) != 3 || memcmp(buf, "new", 3) != 0)
        fail("fifo1 does not carry new bytes");

    kill(child, SIGUSR1);
    int status;
    if (waitpid(child, &status, 0) != child || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fail("the child did not exit cleanly");
    n = queued(rw);
    if (n != 19)
        fail("fifo2 holds %d bytes, not 19", n);
    if (read(rw, buf, 19) != 19 || memcmp(buf, "rw queuedfrom child", 19) != 0)
        fail("fifo2 holds \"%.19s\"", buf);
    succeed();
}
