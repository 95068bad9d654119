/*
 * inotify DIR: an inotify instance watching DIR (IN_CREATE), DIR/a
 * (IN_MODIFY) and DIR/c (IN_CLOSE_WRITE), with watch numbers 1, 2 and 4 (a
 * watch on DIR/b was removed in between). After SIGUSR1 it checks that
 * fdinfo shows the same watches, that no event is queued, and that each
 * watch reports its event with its number. Prints "OK" or "FAIL ...".
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <poll.h>
#include <sys/inotify.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "workload.h"

static char dir[4096];

static void path_of(char *out, const char *name)
{
    snprintf(out, 4200, "%s/%s", dir, name);
}

/* The "inotify wd:... mask:..." part of each watch line of fdinfo. */
static void watches(int fd, char *out, size_t len)
{
    char path[64], buf[8192];
    snprintf(path, sizeof path, "/proc/self/fdinfo/%d", fd);
    FILE *f = fopen(path, "r");
    if (!f)
        die("fdinfo");
    out[0] = 0;
    while (fgets(buf, sizeof buf, f)) {
        if (strncmp(buf, "inotify wd:", 11) != 0)
            continue;
        char *end = strstr(buf, " ignored_mask");
        if (end)
            *end = 0;
        /* Without the inode number, which is the file's and the same anyway. */
        char *ino = strstr(buf, " ino:");
        char *sdev = strstr(buf, " sdev:");
        if (ino && sdev)
            memmove(ino, sdev, strlen(sdev) + 1);
        strncat(out, buf, len - strlen(out) - 2);
        strcat(out, ";");
    }
    fclose(f);
}

/* The next event within 5 s must be `mask` on watch `wd`. */
static void expect_event(int fd, int wd, uint32_t mask)
{
    struct pollfd p = { fd, POLLIN, 0 };
    if (poll(&p, 1, 5000) != 1)
        fail("no event for watch %d", wd);
    char buf[4096] __attribute__((aligned(8)));
    ssize_t n = read(fd, buf, sizeof buf);
    struct inotify_event *e = (struct inotify_event *)buf;
    if (n < (ssize_t)sizeof *e || e->wd != wd || !(e->mask & mask))
        fail("event on watch %d mask %#x, expected watch %d mask %#x", n > 0 ? e->wd : -1, n > 0 ? e->mask : 0, wd, mask);
}

static void touch(const char *name)
{
    char p[4200];
    path_of(p, name);
    int f = open(p, O_WRONLY | O_CREAT | O_APPEND, 0600);
    if (f < 0 || write(f, "x", 1) != 1)
        die(p);
    close(f);
}

int main(int argc, char **argv)
{
    workload_init();
    if (argc != 2) {
        fprintf(stderr, "usage: inotify DIR\n");
        return 2;
    }
    snprintf(dir, sizeof dir, "%s", argv[1]);
    char a[4200], b[4200], c[4200];
    path_of(a, "a");
    path_of(b, "b");
    path_of(c, "c");
    touch("a");
    touch("b");
    touch("c");
    int fd = inotify_init1(IN_CLOEXEC);
    if (fd < 0)
        die("inotify_init1");
    int wd_dir = inotify_add_watch(fd, dir, IN_CREATE);
    int wd_a = inotify_add_watch(fd, a, IN_MODIFY);
    int wd_b = inotify_add_watch(fd, b, IN_ATTRIB);
    if (wd_dir != 1 || wd_a != 2 || wd_b != 3 || inotify_rm_watch(fd, wd_b) != 0)
        die("inotify_add_watch");
    char buf[4096];
    if (read(fd, buf, sizeof buf) <= 0) /* IN_IGNORED of the removed watch */
        die("read IN_IGNORED");
    int wd_c = inotify_add_watch(fd, c, IN_CLOSE_WRITE);
    if (wd_c != 4)
        die("inotify_add_watch c");
    char before[8192], after[8192];
    watches(fd, before, sizeof before);
    printf("READY %d\n", (int)getpid());
    wait_usr1();
    watches(fd, after, sizeof after);
    if (strcmp(before, after) != 0)
        fail("watches were %s and are %s", before, after);
    int queued = -1;
    if (ioctl(fd, FIONREAD, &queued) != 0 || queued != 0)
        fail("%d bytes of events queued", queued);
    if (!(fcntl(fd, F_GETFD) & FD_CLOEXEC) || (fcntl(fd, F_GETFL) & O_NONBLOCK))
        fail("fd flags %#x %#x", fcntl(fd, F_GETFD), fcntl(fd, F_GETFL));
    touch("a");
    expect_event(fd, wd_a, IN_MODIFY);
    touch("new");
    expect_event(fd, wd_dir, IN_CREATE);
    touch("c");
    expect_event(fd, wd_c, IN_CLOSE_WRITE);
    succeed();
}
