/* A terminal program: prints its terminal's window size ("size ROWSxCOLS")
 * at start and after each SIGWINCH, and a count every 50 ms ("n COUNT"),
 * until a signal ends it (Ctrl-C). */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t resized;

static void on_winch(int sig)
{
    (void)sig;
    resized = 1;
}

static void print_size(void)
{
    struct winsize ws;
    if (ioctl(0, TIOCGWINSZ, &ws) == 0)
        printf("size %dx%d\n", ws.ws_row, ws.ws_col);
    fflush(stdout);
}

int main(void)
{
    struct sigaction sa = { .sa_handler = on_winch };
    sigaction(SIGWINCH, &sa, NULL);
    print_size();
    for (long n = 0;; n++) {
        struct timespec ts = { 0, 50 * 1000000L };
        nanosleep(&ts, NULL);
        if (resized) {
            resized = 0;
            print_size();
        }
        printf("n %ld\n", n);
        fflush(stdout);
    }
}
