/*
 * devices: holds the character devices programs open, and checks after a
 * restore that each fd is the same device with the same flags (they keep no
 * offset: lseek on them always answers 0).
 *
 *   devices           /dev/null (O_RDWR), /dev/zero (O_RDONLY),
 *                     /dev/full (O_WRONLY|O_APPEND), /dev/random
 *                     (O_RDONLY|O_NONBLOCK), /dev/urandom (O_RDONLY, close-on-exec)
 *   devices tty       the same, and /dev/tty (O_RDWR): on SIGUSR1 it also
 *                     writes "via /dev/tty" to it, which must reach the
 *                     controlling terminal of the restored process
 *   devices node PATH the character device node PATH (made by the test), O_RDONLY
 *
 * Prints "READY <pid>", waits for SIGUSR1, checks, prints "OK" or "FAIL ...".
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "workload.h"

struct dev {
    const char *path;
    int flags;
    unsigned major, minor;
    int fd;
};

static struct dev devs[] = {
    { "/dev/null", O_RDWR, 1, 3, -1 },
    { "/dev/zero", O_RDONLY, 1, 5, -1 },
    { "/dev/full", O_WRONLY | O_APPEND, 1, 7, -1 },
    { "/dev/random", O_RDONLY | O_NONBLOCK, 1, 8, -1 },
    { "/dev/urandom", O_RDONLY | O_CLOEXEC, 1, 9, -1 },
    { "/dev/tty", O_RDWR, 5, 0, -1 },
};

/* The fd of devs[i] is that device, with its open flags and close-on-exec. */
static void check_dev(const struct dev *d)
{
    struct stat st;
    if (fstat(d->fd, &st) != 0 || !S_ISCHR(st.st_mode) || major(st.st_rdev) != d->major || minor(st.st_rdev) != d->minor)
        fail("%s: fd %d is not device %u:%u", d->path, d->fd, d->major, d->minor);
    int fl = fcntl(d->fd, F_GETFL);
    int want = d->flags & ~O_CLOEXEC;
    if ((fl & (O_ACCMODE | O_APPEND | O_NONBLOCK)) != want)
        fail("%s: flags %#o, expected %#o", d->path, fl, want);
    int cloexec = (fcntl(d->fd, F_GETFD) & FD_CLOEXEC) != 0;
    if (cloexec != ((d->flags & O_CLOEXEC) != 0))
        fail("%s: close-on-exec %d", d->path, cloexec);
}

/* Each device does what it does. */
static void check_behaviour(void)
{
    char buf[64];
    memset(buf, 1, sizeof buf);
    if (read(devs[1].fd, buf, sizeof buf) != sizeof buf || buf[0] != 0 || buf[63] != 0)
        fail("/dev/zero: no zeros");
    if (write(devs[2].fd, "x", 1) != -1 || errno != ENOSPC)
        fail("/dev/full: write did not fail with ENOSPC");
    if (write(devs[0].fd, "x", 1) != 1 || read(devs[0].fd, buf, 1) != 0)
        fail("/dev/null: not a sink");
    if (read(devs[4].fd, buf, 16) != 16)
        fail("/dev/urandom: read");
}

int main(int argc, char **argv)
{
    workload_init();
    int ndev = 5;
    if (argc == 3 && strcmp(argv[1], "node") == 0) {
        struct stat st;
        int fd = open(argv[2], O_RDONLY);
        if (fd < 0 || fstat(fd, &st) != 0)
            die(argv[2]);
        printf("READY %d\n", (int)getpid());
        wait_usr1();
        struct stat now;
        if (fstat(fd, &now) != 0 || now.st_rdev != st.st_rdev)
            fail("%s: another device", argv[2]);
        succeed();
    }
    if (argc == 2 && strcmp(argv[1], "tty") == 0)
        ndev = 6;
    else if (argc != 1) {
        fprintf(stderr, "usage: devices [tty | node PATH]\n");
        return 2;
    }
    for (int i = 0; i < ndev; i++) {
        devs[i].fd = open(devs[i].path, devs[i].flags);
        if (devs[i].fd < 0)
            die(devs[i].path);
    }
    printf("READY %d\n", (int)getpid());
    wait_usr1();
    for (int i = 0; i < ndev; i++)
        check_dev(&devs[i]);
    check_behaviour();
    if (ndev == 6) {
        const char msg[] = "via /dev/tty\n";
        if (write(devs[5].fd, msg, sizeof msg - 1) != sizeof msg - 1)
            fail("/dev/tty: write: %s", strerror(errno));
    }
    succeed();
}
