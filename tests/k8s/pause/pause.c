/*
 * Sandbox ("pause") process for the test cluster of tests/k8s/cluster.
 *
 * It holds the pod's namespaces open and does nothing else: it sleeps in
 * pause(), reaps children that are re-parented to it (when the pod shares
 * its PID namespace it is PID 1 there) and exits on SIGINT or SIGTERM.
 * Built static (gcc -static) so it can live alone in a FROM-scratch image.
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_stop(int sig)
{
    (void)sig;
    _exit(0);
}

static void on_child(int sig)
{
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
}

int main(int argc, char **argv)
{
    struct sigaction sa;

    if (argc > 1 && strcmp(argv[1], "-v") == 0) {
        puts("aikernel-pause 1");
        return 0;
    }
    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    sa.sa_handler = on_stop;
    if (sigaction(SIGINT, &sa, NULL) < 0 || sigaction(SIGTERM, &sa, NULL) < 0) {
        return 1;
    }
    sa.sa_handler = on_child;
    sa.sa_flags = SA_NOCLDSTOP;
    if (sigaction(SIGCHLD, &sa, NULL) < 0) {
        return 2;
    }

    for (;;) {
        pause();
    }
}
