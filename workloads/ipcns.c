/*
 * ipcns: System V IPC objects and a POSIX message queue in the ipc
 * namespace the process runs in (the test gives it one of its own), to
 * check that they come back with their ids, keys, modes and contents.
 *
 *   Before making its objects it makes and removes one of each kind, so
 *   their ids are not the first ones. Then:
 *   segment A: key 0xC0DE01, 3 pages + 100 bytes, mode 0640, attached
 *      read-write, filled with a pattern
 *   segment B: IPC_PRIVATE, 8 KiB, mode 0600, its first page set to 0xB5
 *      then detached; attached read-only again at a second place
 *   segment C: IPC_PRIVATE, one page of 0xC3, attached, then removed
 *      (IPC_RMID: it lives on while attached)
 *   semaphores: key 0xC0DE02, 3 of them: 7, 0, 42
 *   message queue: key 0xC0DE03, mode 0660: (1 "first"), (5 "five"),
 *      (2, 1000 bytes of pattern), (1 "second")
 *   POSIX queue /crust-ipcns, 8 messages of 64 bytes at most: "low" (1),
 *      "high" (9), "low2" (1); its fd closed
 *
 * Prints "READY <pid> shm=<id> priv=<id> dest=<id> sem=<id> msg=<id> b=<B's
 * address, hex>". On SIGUSR1 it
 * finds each object by key with the same id, checks contents, values and
 * messages in order, and that A is still shared (a byte written through
 * its attachment is seen through a new one), then prints OK or FAIL.
 *
 * `ipcns host`: segment A only, in the namespace it was started in (the
 * host's), attached and marked removed (it goes with the process).
 * `ipcns other`: as `host`, then the process moves to an ipc namespace of
 * its own and makes a segment there with the same id: the attachment is
 * still of the first namespace. In both, SIGUSR1 checks A's pattern.
 * `ipcns notify`: a POSIX queue holding one message, with a notification
 * registered (mq_notify); SIGUSR1 checks the message is still there.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <mqueue.h>
#include <sched.h>
#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <unistd.h>

#include "workload.h"

#define KEY_A 0xC0DE01
#define KEY_SEM 0xC0DE02
#define KEY_MSG 0xC0DE03
#define A_LEN (3 * 4096 + 100)
#define B_LEN 8192
#define MQ "/crust-ipcns"

struct msg {
    long mtype;
    char mtext[1024];
};

static void pattern(unsigned char *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (unsigned char)(i * 31 + seed + i / 251);
}

static int differs(const unsigned char *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != (unsigned char)(i * 31 + seed + i / 251))
            return 1;
    return 0;
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (!f || fputs(text, f) < 0 || fclose(f) != 0)
        die(path);
}

/* Segment A, attached and filled. */
static unsigned char *segment_a(int *id)
{
    *id = shmget(KEY_A, A_LEN, IPC_CREAT | IPC_EXCL | 0640);
    if (*id < 0)
        die("shmget A");
    unsigned char *a = shmat(*id, NULL, 0);
    if (a == (void *)-1)
        die("shmat A");
    pattern(a, A_LEN, 7);
    return a;
}

static int foreign(const char *mode)
{
    int id;
    unsigned char *a = segment_a(&id);
    if (shmctl(id, IPC_RMID, NULL) != 0)
        die("IPC_RMID");
    if (strcmp(mode, "other") == 0) {
        char next[32];
        if (unshare(CLONE_NEWIPC) != 0)
            die("unshare");
        snprintf(next, sizeof next, "%d", id);
        write_file("/proc/sys/kernel/shm_next_id", next);
        if (shmget(KEY_A, A_LEN, IPC_CREAT | 0640) != id)
            die("shmget in the new namespace");
    }
    printf("READY %d shm=%d\n", (int)getpid(), id);
    wait_usr1();
    if (differs(a, A_LEN, 7))
        fail("segment A changed");
    succeed();
}

static int notified(void)
{
    struct mq_attr attr = { .mq_maxmsg = 4, .mq_msgsize = 16 };
    mq_unlink(MQ);
    mqd_t mq = mq_open(MQ, O_CREAT | O_EXCL | O_RDWR | O_NONBLOCK, 0600, &attr);
    struct sigevent ev = { .sigev_notify = SIGEV_SIGNAL, .sigev_signo = SIGUSR2 };
    signal(SIGUSR2, SIG_IGN);
    if (mq == (mqd_t)-1 || mq_send(mq, "kept", 4, 3) || mq_notify(mq, &ev))
        die("mqueue with a notification");
    printf("READY %d\n", (int)getpid());
    wait_usr1();
    char buf[16];
    unsigned prio;
    if (mq_receive(mq, buf, sizeof buf, &prio) != 4 || memcmp(buf, "kept", 4) || prio != 3)
        fail("the queued message is gone");
    succeed();
}

int main(int argc, char **argv)
{
    workload_init();
    if (argc > 1 && strcmp(argv[1], "notify") == 0)
        return notified();
    if (argc > 1)
        return foreign(argv[1]);
    /* One of each made and removed: the next ids are not the first. */
    int s = shmget(IPC_PRIVATE, 4096, 0600), m = msgget(IPC_PRIVATE, 0600), q = semget(IPC_PRIVATE, 1, 0600);
    if (s < 0 || m < 0 || q < 0 || shmctl(s, IPC_RMID, NULL) || msgctl(m, IPC_RMID, NULL) || semctl(q, 0, IPC_RMID))
        die("first objects");

    int shm;
    unsigned char *a = segment_a(&shm);
    int priv = shmget(IPC_PRIVATE, B_LEN, 0600);
    unsigned char *b = priv < 0 ? (void *)-1 : shmat(priv, NULL, 0);
    if (b == (void *)-1)
        die("segment B");
    memset(b, 0xB5, 4096);
    shmdt(b);
    const unsigned char *b_ro = shmat(priv, NULL, SHM_RDONLY);
    if (b_ro == (void *)-1)
        die("shmat B read-only");

    int dest = shmget(IPC_PRIVATE, 4096, 0600);
    unsigned char *c = dest < 0 ? (void *)-1 : shmat(dest, NULL, 0);
    if (c == (void *)-1)
        die("segment C");
    memset(c, 0xC3, 4096);
    if (shmctl(dest, IPC_RMID, NULL) != 0)
        die("IPC_RMID C");

    int sem = semget(KEY_SEM, 3, IPC_CREAT | IPC_EXCL | 0600);
    unsigned short values[3] = { 7, 0, 42 };
    if (sem < 0 || semctl(sem, 0, SETALL, values) != 0)
        die("semaphores");

    int msg = msgget(KEY_MSG, IPC_CREAT | IPC_EXCL | 0660);
    if (msg < 0)
        die("msgget");
    struct msg out;
    struct { long type; const char *text; size_t len; } sent[] = {
        { 1, "first", 5 }, { 5, "five", 4 }, { 2, NULL, 1000 }, { 1, "second", 6 },
    };
    for (size_t i = 0; i < 4; i++) {
        out.mtype = sent[i].type;
        if (sent[i].text)
            memcpy(out.mtext, sent[i].text, sent[i].len);
        else
            pattern((unsigned char *)out.mtext, sent[i].len, 3);
        if (msgsnd(msg, &out, sent[i].len, IPC_NOWAIT) != 0)
            die("msgsnd");
    }

    struct mq_attr attr = { .mq_maxmsg = 8, .mq_msgsize = 64 };
    mq_unlink(MQ);
    mqd_t mq = mq_open(MQ, O_CREAT | O_EXCL | O_WRONLY, 0640, &attr);
    if (mq == (mqd_t)-1 || mq_send(mq, "low", 3, 1) || mq_send(mq, "high", 4, 9) || mq_send(mq, "low2", 4, 1))
        die("mqueue");
    mq_close(mq);

    printf("READY %d shm=%d priv=%d dest=%d sem=%d msg=%d b=%lx\n", (int)getpid(), shm, priv, dest, sem, msg, (unsigned long)b_ro);
    wait_usr1();

    if (shmget(KEY_A, 0, 0) != shm)
        fail("segment A is not found by its key with id %d", shm);
    if (differs(a, A_LEN, 7))
        fail("segment A's contents changed");
    for (size_t i = 0; i < 4096; i++)
        if (b_ro[i] != 0xB5 || b_ro[4096 + i] != 0)
            fail("segment B differs at %zu", i);
    struct shmid_ds ds;
    if (shmctl(shm, IPC_STAT, &ds) != 0 || (ds.shm_perm.mode & 0777) != 0640 || ds.shm_segsz != A_LEN || ds.shm_nattch != 1)
        fail("segment A's mode, size or attachments changed");
    unsigned char *again = shmat(shm, NULL, 0);
    if (again == (void *)-1)
        fail("attaching A again");
    a[5] = 0x99;
    if (again[5] != 0x99)
        fail("segment A's attachment is not shared with the segment");
    shmdt(again);

    if (shmctl(dest, IPC_STAT, &ds) != 0 || !(ds.shm_perm.mode & SHM_DEST) || ds.shm_nattch != 1)
        fail("segment C is not removed and attached once");
    for (size_t i = 0; i < 4096; i++)
        if (c[i] != 0xC3)
            fail("segment C differs at %zu", i);

    if (semget(KEY_SEM, 0, 0) != sem)
        fail("semaphores not found by key with id %d", sem);
    unsigned short now[3];
    if (semctl(sem, 0, GETALL, now) != 0 || now[0] != 7 || now[1] != 0 || now[2] != 42)
        fail("semaphore values changed");

    if (msgget(KEY_MSG, 0) != msg)
        fail("message queue not found by key with id %d", msg);
    for (size_t i = 0; i < 4; i++) {
        struct msg in;
        ssize_t n = msgrcv(msg, &in, sizeof in.mtext, 0, IPC_NOWAIT);
        if (n != (ssize_t)sent[i].len || in.mtype != sent[i].type)
            fail("message %zu: %zd bytes of type %ld", i, n, in.mtype);
        if (sent[i].text ? memcmp(in.mtext, sent[i].text, sent[i].len) != 0 : differs((unsigned char *)in.mtext, sent[i].len, 3))
            fail("message %zu's bytes changed", i);
    }
    struct msg extra;
    if (msgrcv(msg, &extra, sizeof extra.mtext, 0, IPC_NOWAIT) >= 0)
        fail("a fifth message");

    mq = mq_open(MQ, O_RDONLY | O_NONBLOCK);
    if (mq == (mqd_t)-1)
        fail("mq_open: %s", strerror(errno));
    struct mq_attr got;
    if (mq_getattr(mq, &got) != 0 || got.mq_maxmsg != 8 || got.mq_msgsize != 64 || got.mq_curmsgs != 3)
        fail("POSIX queue attributes: %ld messages of %ld bytes, %ld queued", got.mq_maxmsg, got.mq_msgsize, got.mq_curmsgs);
    const char *expect[] = { "high", "low", "low2" };
    unsigned prios[] = { 9, 1, 1 };
    for (int i = 0; i < 3; i++) {
        char buf[64];
        unsigned prio;
        ssize_t n = mq_receive(mq, buf, sizeof buf, &prio);
        if (n != (ssize_t)strlen(expect[i]) || memcmp(buf, expect[i], n) != 0 || prio != prios[i])
            fail("POSIX message %d: %zd bytes, priority %u", i, n, prio);
    }
    succeed();
}
