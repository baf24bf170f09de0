/* Echo ping-pong in C, the ceiling to compare loopfan's echo traffic with (bench/echo.py runs it
 * beside loopfan when gcc is present).
 *
 *   c_echo CONNECTIONS SECONDS [PROCS]
 *
 * PROCS server processes (one listener each on 127.97.i.1:7321) echo with epoll; PROCS client
 * processes each open CONNECTIONS/PROCS connections bound to 127.96.i.{1,2} (NO_PORT), send 64 B
 * on each, and send again as soon as the 64 B come back (one in flight per connection), for
 * SECONDS. Prints "CONNECTIONS ROUND_TRIPS_PER_S" on stdout (bench/echo.py parses that line) and
 * exits 0. A socket, bind, listen or connect that fails is said in one line on stderr with its
 * errno name, exit 1 (2: bad arguments). Every process it started is killed by pid and waited for
 * before it exits (not its process group: run by hand that was its own shell job, so it killed
 * itself and always exited 137); a child whose parent dies is killed too (PR_SET_PDEATHSIG).
 * With C_ECHO_NO_SERVER=1 in the environment it starts no server: the clients talk to whatever
 * listens on 127.97.i.1:7321 (bench/sockmap_echo.py's in-kernel echo).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif
#define MSG 64
#define MAX_PROCS 256

/* One line on stderr: what failed, on which addresses, and the errno's name (EADDRINUSE) with its
 * text - the name is what people search for. strerrorname_np is glibc 2.32+. */
static void fail(const char *what, const char *where) {
    int e = errno;
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 32))
    const char *name = strerrorname_np(e);
#else
    const char *name = NULL;
#endif
    if (name)
        fprintf(stderr, "c_echo: %s %s failed: %s (%s)\n", what, where, name, strerror(e));
    else
        fprintf(stderr, "c_echo: %s %s failed: errno %d (%s)\n", what, where, e, strerror(e));
}

/* In a child: die with the parent (a killed c_echo must not leave an echo server spinning). */
static void die_with(pid_t parent) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(1); /* it died before the prctl */
}

static pid_t children[2 * MAX_PROCS];
static int n_children;

/* Kill what is still running of ours, by pid (servers loop forever; clients are done or failed),
 * and reap them all. */
static void stop_children(void) {
    for (int i = 0; i < n_children; i++)
        if (children[i] > 0) kill(children[i], SIGKILL);
    for (int i = 0; i < n_children; i++)
        if (children[i] > 0) waitpid(children[i], NULL, 0);
    n_children = 0;
}

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
        char where[96];
        snprintf(where, sizeof where, "%s -> %s:7321 (connection %d)", src, dst, k + 1);
        int f = socket(AF_INET, SOCK_STREAM, 0), one = 1;
        if (f < 0) {
            fail("socket", where);
            _exit(1);
        }
        setsockopt(f, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        if (bind(f, (void *)&sa, sizeof sa)) {
            fail("bind", where);
            _exit(1);
        }
        if (connect(f, (void *)&da, sizeof da)) {
            fail("connect", where);
            _exit(1);
        }
        struct epoll_event e = {.events = EPOLLIN, .data.fd = f};
        epoll_ctl(ep, EPOLL_CTL_ADD, f, &e);
        if (write(f, msg, MSG) != MSG) {
            fail("write", where);
            _exit(1);
        }
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
    if (conns < 1 || seconds <= 0 || procs < 1 || procs > MAX_PROCS || conns < procs) {
        fprintf(stderr, "c_echo: want CONNECTIONS >= PROCS >= 1 (PROCS <= %d) and SECONDS > 0; "
                        "usage: c_echo CONNECTIONS SECONDS [PROCS]\n", MAX_PROCS);
        return 2;
    }
    int pipefd[2];
    if (pipe(pipefd)) {
        fail("pipe", "for the clients' counts");
        return 1;
    }
    pid_t self = getpid();
    int servers = getenv("C_ECHO_NO_SERVER") ? 0 : procs;
    for (int s = 0; s < servers; s++) {
        char a[32], where[48];
        snprintf(a, sizeof a, "127.97.%d.1", s);
        snprintf(where, sizeof where, "%s:7321", a);
        int l = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
        if (l < 0) {
            fail("socket", where);
            stop_children();
            return 1;
        }
        setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(7321)};
        inet_pton(AF_INET, a, &sa.sin_addr);
        if (bind(l, (void *)&sa, sizeof sa)) {
            fail("bind", where);
            stop_children();
            return 1;
        }
        if (listen(l, 65535)) {
            fail("listen", where);
            stop_children();
            return 1;
        }
        pid_t pid = fork();
        if (pid < 0) {
            fail("fork", "for a server");
            stop_children();
            return 1;
        }
        if (pid == 0) {
            die_with(self);
            close(pipefd[0]);
            close(pipefd[1]); /* only the clients write counts: the parent's read sees their EOF */
            server(l);
        }
        children[n_children++] = pid;
        close(l);
    }
    usleep(200000);
    for (int i = 0; i < procs; i++) {
        pid_t pid = fork();
        if (pid < 0) {
            fail("fork", "for a client");
            stop_children();
            return 1;
        }
        if (pid == 0) {
            die_with(self);
            close(pipefd[0]);
            client(i, conns / procs, seconds, pipefd[1]);
        }
        children[n_children++] = pid;
    }
    close(pipefd[1]); /* a client that fails exits without writing: its end closes, no hang */
    long total = 0, t;
    int counted = 0;
    while (counted < procs && read(pipefd[0], &t, sizeof t) == sizeof t) {
        total += t;
        counted++;
    }
    /* The pipe is at EOF or every count is in: each client has exited or is exiting. A client that
     * exited 1 said why on stderr; one that died otherwise (a signal) is said here. */
    int said = 0, silent = 0;
    for (int i = servers; i < n_children; i++) {
        int status = 0;
        if (waitpid(children[i], &status, 0) == children[i]) {
            children[i] = 0; /* reaped: not to be killed by a pid that may be reused */
            said += WIFEXITED(status) && WEXITSTATUS(status) == 1;
            silent += !(WIFEXITED(status) && WEXITSTATUS(status) <= 1);
        }
    }
    stop_children();
    if (counted < procs) {
        if (silent || !said)
            fprintf(stderr, "c_echo: %d of %d client processes died without a count: no result\n",
                    procs - counted, procs);
        return 1;
    }
    printf("%d %.0f\n", conns, total / seconds);
    fflush(stdout);
    return 0;
}
