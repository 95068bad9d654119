/*
 * fanotify DIR: DIR is a mount of its own (the test mounts a tmpfs there, so
 * that nothing else makes events on it). Two fanotify groups:
 *   g1 (FAN_CLASS_NOTIF, non-blocking, events opened O_RDONLY|O_LARGEFILE):
 *      an inode mark on DIR/a (FAN_MODIFY | FAN_CLOSE_WRITE), a mount mark on
 *      DIR (FAN_OPEN), and an inode mark on DIR/c ignoring FAN_OPEN (and
 *      surviving modification);
 *   g2 (FAN_REPORT_FID): a file-system mark on DIR's file system (FAN_MODIFY).
 * After SIGUSR1 it checks that fdinfo shows the same groups and marks, that
 * nothing is queued, the fd flags, and that the marks still report: opening
 * DIR/x reports FAN_OPEN to g1, opening DIR/c reports nothing, writing DIR/a
 * reports FAN_MODIFY and FAN_CLOSE_WRITE to g1 and FAN_MODIFY to g2.
 * Prints "READY <pid>", then "OK" or "FAIL ...".
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <poll.h>
#include <sys/fanotify.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "workload.h"

static char dir[4000];

static void path_of(char *out, const char *name)
{
    snprintf(out, 4100, "%s/%s", dir, name);
}

/* The "fanotify ..." lines of fdinfo. */
static void marks(int fd, char *out, size_t len)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/self/fdinfo/%d", fd);
    FILE *f = fopen(path, "r");
    if (!f)
        die("fdinfo");
    out[0] = 0;
    while (fgets(buf, sizeof buf, f)) {
        if (strncmp(buf, "fanotify ", 9) != 0)
            continue;
        buf[strcspn(buf, "\n")] = ';';
        strncat(out, buf, len - strlen(out) - 1);
    }
    fclose(f);
}

static void touch(const char *name, int flags)
{
    char p[4100];
    path_of(p, name);
    int f = open(p, flags, 0600);
    if (f < 0)
        die(p);
    if ((flags & O_ACCMODE) != O_RDONLY && write(f, "x", 1) != 1)
        die("write");
    close(f);
}

/* Events of g1 within 300 ms: the masks seen for files a, c and x. */
static void g1_events(int fd, uint64_t *a, uint64_t *c, uint64_t *x)
{
    *a = *c = *x = 0;
    for (;;) {
        struct pollfd p = { fd, POLLIN, 0 };
        if (poll(&p, 1, 300) != 1)
            return;
        char buf[4096] __attribute__((aligned(8)));
        ssize_t n = read(fd, buf, sizeof buf);
        if (n <= 0)
            return;
        for (struct fanotify_event_metadata *m = (void *)buf; FAN_EVENT_OK(m, n); m = FAN_EVENT_NEXT(m, n)) {
            char link[64], target[4100] = "";
            snprintf(link, sizeof link, "/proc/self/fd/%d", m->fd);
            ssize_t l = readlink(link, target, sizeof target - 1);
            if (l > 0)
                target[l] = 0;
            const char *base = strrchr(target, '/');
            base = base ? base + 1 : target;
            if (strcmp(base, "a") == 0)
                *a |= m->mask;
            else if (strcmp(base, "c") == 0)
                *c |= m->mask;
            else if (strcmp(base, "x") == 0)
                *x |= m->mask;
            if (m->fd >= 0)
                close(m->fd);
        }
    }
}

int main(int argc, char **argv)
{
    workload_init();
    if (argc != 2) {
        fprintf(stderr, "usage: fanotify DIR\n");
        return 2;
    }
    snprintf(dir, sizeof dir, "%s", argv[1]);
    char a[4100], c[4100];
    path_of(a, "a");
    path_of(c, "c");
    touch("a", O_WRONLY | O_CREAT);
    touch("c", O_WRONLY | O_CREAT);
    int g1 = fanotify_init(FAN_CLASS_NOTIF | FAN_CLOEXEC | FAN_NONBLOCK, O_RDONLY | O_LARGEFILE);
    int g2 = fanotify_init(FAN_CLASS_NOTIF | FAN_REPORT_FID, O_RDONLY);
    if (g1 < 0 || g2 < 0)
        die("fanotify_init");
    if (fanotify_mark(g1, FAN_MARK_ADD, FAN_MODIFY | FAN_CLOSE_WRITE, AT_FDCWD, a)
        || fanotify_mark(g1, FAN_MARK_ADD | FAN_MARK_MOUNT, FAN_OPEN, AT_FDCWD, dir)
        || fanotify_mark(g1, FAN_MARK_ADD | FAN_MARK_IGNORED_MASK | FAN_MARK_IGNORED_SURV_MODIFY, FAN_OPEN, AT_FDCWD, c)
        || fanotify_mark(g2, FAN_MARK_ADD | FAN_MARK_FILESYSTEM, FAN_MODIFY, AT_FDCWD, dir))
        die("fanotify_mark");
    char before1[4096], before2[4096], after[4096];
    marks(g1, before1, sizeof before1);
    marks(g2, before2, sizeof before2);
    printf("READY %d\n", (int)getpid());
    wait_usr1();
    marks(g1, after, sizeof after);
    if (strcmp(before1, after) != 0)
        fail("g1 marks were %s and are %s", before1, after);
    marks(g2, after, sizeof after);
    if (strcmp(before2, after) != 0)
        fail("g2 marks were %s and are %s", before2, after);
    int q1 = -1, q2 = -1;
    if (ioctl(g1, FIONREAD, &q1) || ioctl(g2, FIONREAD, &q2) || q1 || q2)
        fail("events queued: %d %d", q1, q2);
    if (!(fcntl(g1, F_GETFD) & FD_CLOEXEC) || (fcntl(g2, F_GETFD) & FD_CLOEXEC))
        fail("fd flags %#x %#x", fcntl(g1, F_GETFD), fcntl(g2, F_GETFD));
    if (!(fcntl(g1, F_GETFL) & O_NONBLOCK) || (fcntl(g2, F_GETFL) & O_NONBLOCK))
        fail("file flags %#x %#x", fcntl(g1, F_GETFL), fcntl(g2, F_GETFL));
    touch("x", O_RDONLY | O_CREAT);
    touch("c", O_RDONLY);
    touch("a", O_WRONLY | O_APPEND);
    uint64_t ma, mc, mx;
    g1_events(g1, &ma, &mc, &mx);
    if (!(mx & FAN_OPEN))
        fail("no FAN_OPEN for x (the mount mark): %#llx", (unsigned long long)mx);
    if (mc)
        fail("events %#llx for c, whose opens are ignored", (unsigned long long)mc);
    if ((ma & (FAN_MODIFY | FAN_CLOSE_WRITE | FAN_OPEN)) != (FAN_MODIFY | FAN_CLOSE_WRITE | FAN_OPEN))
        fail("events %#llx for a", (unsigned long long)ma);
    struct pollfd p = { g2, POLLIN, 0 };
    char buf[4096] __attribute__((aligned(8)));
    if (poll(&p, 1, 2000) != 1)
        fail("no event on the file-system mark");
    ssize_t n = read(g2, buf, sizeof buf);
    struct fanotify_event_metadata *m = (void *)buf;
    if (n < (ssize_t)sizeof *m || !(m->mask & FAN_MODIFY))
        fail("file-system mark reported %#llx", n > 0 ? (unsigned long long)m->mask : 0ULL);
    succeed();
}
