/*
 * seccomp_exec PROGRAM ARGS...: installs a seccomp filter (acct fails with
 * EPERM, every other call is allowed) and execs PROGRAM, as a container
 * engine's runtime does before a container's init. Needs no_new_privs set
 * already (setpriv --no-new-privs) or CAP_SYS_ADMIN. Not a READY workload:
 * a launcher for the container tests.
 */
#define _GNU_SOURCE
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>
#include "workload.h"

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: seccomp_exec PROGRAM ARGS...\n");
        return 2;
    }
    struct sock_filter code[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_acct, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = { sizeof code / sizeof code[0], code };
    if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) != 0)
        die("seccomp");
    execv(argv[1], argv + 1);
    die("execv");
}
