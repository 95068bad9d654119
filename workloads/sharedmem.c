/*
 * sharedmem: shared anonymous memory between a parent and its child, to
 * check that it comes back with its contents, and shared.
 *
 *   A: 1 MiB MAP_SHARED|MAP_ANONYMOUS, its first 512 KiB filled with a
 *      pattern before the fork, the rest never touched
 *   B: 64 KiB of /dev/zero mapped shared (the same kind of object), whose
 *      first word the child sets to 0xC0FFEE
 *   C: 256 KiB shared, all 0x5A, then its second half unmapped (the object
 *      holds more than any mapping reaches)
 *
 * Prints "READY <pid> child=<pid>". On SIGUSR1 the parent checks A's pattern
 * and untouched half, B's word from the child and C; then writes a question in
 * A and signals the child (SIGUSR2), which answers in A and in B: the parent
 * waits for both answers (the memory is still shared), then prints "OK" or
 * "FAIL".
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "workload.h"

#define A_LEN (1 << 20)
#define B_LEN (64 << 10)

static volatile sig_atomic_t got_usr2;

static void on_usr2(int sig)
{
    (void)sig;
    got_usr2 = 1;
}

int main(void)
{
    workload_init();
    unsigned char *a = mmap(NULL, A_LEN, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    int zero = open("/dev/zero", O_RDWR);
    volatile uint32_t *b = zero < 0 ? MAP_FAILED : mmap(NULL, B_LEN, PROT_READ | PROT_WRITE, MAP_SHARED, zero, 0);
    if (a == MAP_FAILED || b == MAP_FAILED)
        die("mmap");
    close(zero);
    unsigned char *c = mmap(NULL, 256 << 10, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (c == MAP_FAILED)
        die("mmap c");
    memset(c, 0x5A, 256 << 10);
    munmap(c + (128 << 10), 128 << 10);
    for (size_t i = 0; i < A_LEN / 2; i++)
        a[i] = (unsigned char)(i * 13 + i / 4093);
    volatile uint32_t *question = (uint32_t *)(a + A_LEN - 8), *answer = (uint32_t *)(a + A_LEN - 4);
    struct sigaction sa = { .sa_handler = on_usr2 };
    sigemptyset(&sa.sa_mask);
    sigaction(SIGUSR2, &sa, NULL);
    pid_t child = fork();
    if (child < 0)
        die("fork");
    if (child == 0) {
        b[0] = 0xC0FFEE;
        for (;;) {
            while (!got_usr2)
                sleep_ms(10);
            got_usr2 = 0;
            b[1] = *question + 1;
            *answer = *question + 1;
        }
    }
    while (b[0] != 0xC0FFEE)
        sleep_ms(5);
    printf("READY %d child=%d\n", (int)getpid(), (int)child);
    wait_usr1();

    for (size_t i = 0; i < A_LEN / 2; i++)
        if (a[i] != (unsigned char)(i * 13 + i / 4093))
            fail("A differs at byte %zu", i);
    for (size_t i = A_LEN / 2; i < A_LEN - 8; i++)
        if (a[i])
            fail("A's untouched half is not zero at byte %zu", i);
    if (b[0] != 0xC0FFEE)
        fail("B lost the child's word");
    for (size_t i = 0; i < 128 << 10; i++)
        if (c[i] != 0x5A)
            fail("C differs at byte %zu", i);
    *question = 41;
    kill(child, SIGUSR2);
    for (int i = 0; i < 500 && *answer != 42; i++)
        sleep_ms(10);
    if (*answer != 42)
        fail("the child's answer did not come through A: not shared any more");
    if (b[1] != 42)
        fail("the child's answer did not come through B: not shared any more");
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    succeed();
}
