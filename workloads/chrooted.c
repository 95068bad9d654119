/*
 * chrooted DIR: a process whose root was changed with chroot(2).
 *
 * Makes DIR/sub, chroots into DIR and enters /sub. Prints "READY".
 * On SIGUSR1: checks its cwd is /sub and its root is DIR (same inode as
 * before the chroot), then prints "OK" (exit 0) or "FAIL <reason>".
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "workload.h"

int main(int argc, char **argv)
{
    workload_init();
    if (argc != 2)
        die("usage: chrooted DIR");
    char sub[4096];
    snprintf(sub, sizeof sub, "%s/sub", argv[1]);
    struct stat dir, sub_st;
    if (mkdir(sub, 0700) != 0 || stat(argv[1], &dir) != 0 || stat(sub, &sub_st) != 0)
        die("DIR/sub");
    if (chroot(argv[1]) != 0 || chdir("/sub") != 0)
        die("chroot");
    printf("READY\n");
    wait_usr1();

    char cwd[4096];
    struct stat root, here;
    if (!getcwd(cwd, sizeof cwd) || strcmp(cwd, "/sub") != 0)
        fail("cwd is %s, not /sub", cwd);
    if (stat("/", &root) != 0 || root.st_ino != dir.st_ino || root.st_dev != dir.st_dev)
        fail("the root is not DIR");
    if (stat(".", &here) != 0 || here.st_ino != sub_st.st_ino)
        fail("the cwd is not DIR/sub");
    printf("OK\n");
    return 0;
}
