/* Echo ping-pong in C, the ceiling to compare loopfan's echo traffic with (bench/echo.py runs it
 * beside loopfan when gcc is present).
 *
 *   c_echo CONNECTIONS SECONDS [PROCS]
 *
 * PROCS server processes (one listener each on 127.97.i.1:7321) echo with epoll; PROCS client
 * processes each open CONNECTIONS/PROCS connections bound to 127.96.i.{1,2} (NO_PORT), send 64 B
 * on each, and send again as soon as the 64 B come back (one in flight per connection), for
 * SECONDS. Prints round trips per second. Everything it started is killed before it exits.
 * With C_ECHO_NO_SERVER=1 in the environment it starts no server: the clients talk to whatever
 * listens on 127.97.i.1:7321 (bench/sockmap_echo.py's in-kernel echo).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif
#define MSG 64

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static void server(int l) {
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = l}, evs[256];
    epoll_ctl(ep, EPOLL_CTL_ADD, l, &ev);
    char buf[4096];
    for (;;) {
        int n = epoll_wait(ep, evs, 256, 1000);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == l) {
                int f;
                while ((f = accept4(l, 0, 0, SOCK_NONBLOCK)) >= 0) {
                    struct epoll_event e = {.events = EPOLLIN, .data.fd = f};
                    epoll_ctl(ep, EPOLL_CTL_ADD, f, &e);
                }
                continue;
            }
            ssize_t r = read(fd, buf, sizeof buf);
            if (r <= 0) {
                close(fd);
                continue;
            }
            if (write(fd, buf, r) < 0) close(fd);
        }
    }
}

static void client(int i, int conns, double seconds, int out) {
    char src[32], dst[32], msg[MSG] = {0}, buf[4096];
    snprintf(dst, sizeof dst, "127.97.%d.1", i);
    struct sockaddr_in da = {.sin_family = AF_INET, .sin_port = htons(7321)};
    inet_pton(AF_INET, dst, &da.sin_addr);
    int ep = epoll_create1(0);
    for (int k = 0; k < conns; k++) {
        snprintf(src, sizeof src, "127.96.%d.%d", i, 1 + k % 2);
        struct sockaddr_in sa = {.sin_family = AF_INET};
        inet_pton(AF_INET, src, &sa.sin_addr);
        int f = socket(AF_INET, SOCK_STREAM, 0), one = 1;
        setsockopt(f, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        if (bind(f, (void *)&sa, sizeof sa) || connect(f, (void *)&da, sizeof da)) _exit(1);
        struct epoll_event e = {.events = EPOLLIN, .data.fd = f};
        epoll_ctl(ep, EPOLL_CTL_ADD, f, &e);
        if (write(f, msg, MSG) != MSG) _exit(1);
    }
    long trips = 0;
    double end = now() + seconds;
    struct epoll_event evs[256];
    while (now() < end) {
        int n = epoll_wait(ep, evs, 256, 100);
        for (int k = 0; k < n; k++) {
            int fd = evs[k].data.fd;
            if (read(fd, buf, sizeof buf) <= 0) continue;
            trips++;
            if (write(fd, msg, MSG) != MSG) continue;
        }
    }
    if (write(out, &trips, sizeof trips) != sizeof trips) _exit(1);
    _exit(0);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: c_echo CONNECTIONS SECONDS [PROCS]\n");
        return 2;
    }
    int conns = atoi(argv[1]), procs = argc > 3 ? atoi(argv[3]) : 1;
    double seconds = atof(argv[2]);
    int pipefd[2];
    if (pipe(pipefd)) return 1;
    setpgid(0, 0);
    int servers = getenv("C_ECHO_NO_SERVER") ? 0 : procs;
    for (int s = 0; s < servers; s++) {
        char a[32];
        snprintf(a, sizeof a, "127.97.%d.1", s);
        int l = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
        setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(7321)};
        inet_pton(AF_INET, a, &sa.sin_addr);
        if (bind(l, (void *)&sa, sizeof sa) || listen(l, 65535)) return 1;
        if (fork() == 0) server(l);
        close(l);
    }
    usleep(200000);
    for (int i = 0; i < procs; i++)
        if (fork() == 0) client(i, conns / procs, seconds, pipefd[1]);
    long total = 0, t;
    for (int i = 0; i < procs; i++)
        if (read(pipefd[0], &t, sizeof t) == sizeof t) total += t;
    printf("%d %.0f\n", conns, total / seconds);
    fflush(stdout);
    signal(SIGTERM, SIG_IGN);
    kill(0, SIGKILL);
    return 0;
}
