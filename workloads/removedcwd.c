/*
 * removedcwd DIR: a process whose working directory was removed.
 *
 * Makes DIR (mode 0750), enters it and removes it. Prints "READY".
 * On SIGUSR1: checks its cwd is still a directory with that mode, with no
 * link left, in which nothing can be made, then prints "OK" (exit 0) or
 * "FAIL <reason>".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "workload.h"

int main(int argc, char **argv)
{
    workload_init();
    if (argc != 2)
        die("usage: removedcwd DIR");
    if (mkdir(argv[1], 0750) != 0 || chmod(argv[1], 0750) != 0 || chdir(argv[1]) != 0 || rmdir(argv[1]) != 0)
        die("DIR");
    printf("READY\n");
    wait_usr1();

    struct stat here;
    if (stat(".", &here) != 0)
        fail("stat of the cwd: %s", strerror(errno));
    if (!S_ISDIR(here.st_mode) || (here.st_mode & 07777) != 0750)
        fail("the cwd has mode %o", (unsigned)here.st_mode);
    if (here.st_nlink != 0)
        fail("the cwd has %d links: not removed", (int)here.st_nlink);
    if (open("new", O_CREAT | O_WRONLY, 0600) >= 0 || errno != ENOENT)
        fail("a file could be made in the removed cwd");
    succeed();
}
