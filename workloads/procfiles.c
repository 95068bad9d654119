/*
 * procfiles: files of proc and sysfs held open, as programs hold them.
 *
 * Forks a child that sleeps; opens /proc/self/stat and /proc/cpuinfo (10
 * bytes read from each, so their offsets are 10), the child's
 * /proc/PID/status, and
 * /sys/devices/system/cpu/online (read once). Prints
 * "READY child=<pid>".
 *
 * On SIGUSR1: checks the stat fd is at offset 10 and is this process's own
 * stat, the status fd is the child's, the sysfs fd reads a cpu list; then
 * kills and reaps the child and prints "OK" (exit 0) or "FAIL <reason>".
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "workload.h"

int main(void)
{
    workload_init();
    pid_t child = fork();
    if (child < 0)
        die("fork");
    if (child == 0) {
        for (;;)
            pause();
    }
    char path[64], buf[4096];
    int stat_fd = open("/proc/self/stat", O_RDONLY);
    if (stat_fd < 0 || read(stat_fd, buf, 10) != 10)
        die("/proc/self/stat");
    int cpu_fd = open("/proc/cpuinfo", O_RDONLY);
    if (cpu_fd < 0 || read(cpu_fd, buf, 10) != 10)
        die("/proc/cpuinfo");
    snprintf(path, sizeof path, "/proc/%d/status", (int)child);
    int status_fd = open(path, O_RDONLY);
    if (status_fd < 0)
        die("child's status");
    int sys_fd = open("/sys/devices/system/cpu/online", O_RDONLY);
    if (sys_fd < 0 || read(sys_fd, buf, sizeof buf) <= 0)
        die("/sys/devices/system/cpu/online");
    printf("READY child=%d\n", (int)child);
    wait_usr1();

    if (lseek(stat_fd, 0, SEEK_CUR) != 10)
        fail("the stat fd is at %ld, not 10", (long)lseek(stat_fd, 0, SEEK_CUR));
    ssize_t n = pread(stat_fd, buf, sizeof buf - 1, 0);
    char want[32];
    snprintf(want, sizeof want, "%d (", (int)getpid());
    if (n <= 0 || (buf[n] = 0, strncmp(buf, want, strlen(want)) != 0))
        fail("the stat fd reads %.20s, not this process's stat", n > 0 ? buf : "nothing");
    n = pread(status_fd, buf, sizeof buf - 1, 0);
    snprintf(want, sizeof want, "\nPid:\t%d\n", (int)child);
    if (n <= 0 || (buf[n] = 0, strstr(buf, want) == NULL))
        fail("the status fd is not the child's");
    if (lseek(cpu_fd, 0, SEEK_CUR) != 10 || pread(cpu_fd, buf, 9, 0) != 9 || strncmp(buf, "processor", 9) != 0)
        fail("the cpuinfo fd is not /proc/cpuinfo at offset 10");
    n = pread(sys_fd, buf, sizeof buf - 1, 0);
    if (n <= 0 || buf[0] < '0' || buf[0] > '9')
        fail("the sysfs fd reads no cpu list");
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    printf("OK\n");
    return 0;
}
