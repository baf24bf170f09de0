/* The physical ceiling for connect-and-hold on this machine, in C, for side-by-side comparison
 * with loopfan (bench/connect_rate.py compiles and runs it when gcc is present).
 *
 *   c_baseline CLIENTS PER [CONCURRENCY]
 *
 * CLIENTS acceptor processes, one listener each on 127.99.i.1:7311, accept with epoll; CLIENTS
 * client processes each open PER connections to their acceptor, bound to 127.98.i.{1,2} with
 * IP_BIND_ADDRESS_NO_PORT and a blocking connect (on loopback the handshake completes inside the
 * call), CONCURRENCY of them at a time. Prints connections per second from the first connect to
 * the last. Everything it started is killed before it exits.
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

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static void acceptor(int l) {
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = l}, evs[16];
    epoll_ctl(ep, EPOLL_CTL_ADD, l, &ev);
    for (;;) {
        int n = epoll_wait(ep, evs, 16, 1000);
        for (int i = 0; i < n; i++)
            while (accept4(l, 0, 0, SOCK_NONBLOCK) >= 0) {
            }
    }
}

static void client(int i, int per, int done_fd) {
    char src[32], dst[32];
    snprintf(dst, sizeof dst, "127.99.%d.1", i);
    struct sockaddr_in da = {.sin_family = AF_INET, .sin_port = htons(7311)};
    inet_pton(AF_INET, dst, &da.sin_addr);
    for (int k = 0; k < per; k++) {
        snprintf(src, sizeof src, "127.98.%d.%d", i, 1 + k % 2);
        struct sockaddr_in sa = {.sin_family = AF_INET};
        inet_pton(AF_INET, src, &sa.sin_addr);
        int f = socket(AF_INET, SOCK_STREAM, 0), one = 1;
        setsockopt(f, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        if (bind(f, (void *)&sa, sizeof sa) || connect(f, (void *)&da, sizeof da)) {
            perror("c_baseline client");
            _exit(1);
        }
    }
    char b = 1;
    if (write(done_fd, &b, 1) != 1) _exit(1);
    pause();
    _exit(0);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: c_baseline CLIENTS PER [CONCURRENCY]\n");
        return 2;
    }
    int clients = atoi(argv[1]), per = atoi(argv[2]);
    int conc = argc > 3 ? atoi(argv[3]) : clients;
    int pipefd[2];
    if (pipe(pipefd)) return 1;
    setpgid(0, 0);
    for (int s = 0; s < clients; s++) {
        char a[32];
        snprintf(a, sizeof a, "127.99.%d.1", s);
        int l = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
        setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(7311)};
        inet_pton(AF_INET, a, &sa.sin_addr);
        if (bind(l, (void *)&sa, sizeof sa) || listen(l, 65535)) {
            perror("c_baseline listen");
            kill(0, SIGKILL);
        }
        if (fork() == 0) acceptor(l);
        close(l);
    }
    usleep(200000);
    double t0 = now();
    int started = 0, finished = 0;
    while (finished < clients) {
        while (started < clients && started - finished < conc)
            if (fork() == 0) client(started, per, pipefd[1]);
            else started++;
        char b;
        if (read(pipefd[0], &b, 1) == 1) finished++;
    }
    double dt = now() - t0;
    printf("%d %d %d %.0f\n", clients * per, clients, conc, clients * per / dt);
    fflush(stdout);
    signal(SIGTERM, SIG_IGN);
    kill(0, SIGKILL); /* the whole process group: acceptors, clients and this process */
    return 0;
}
