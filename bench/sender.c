/* A steady-rate statsd sender for the benchmarks: one line per UDP datagram, batched with
 * sendmmsg in 1 ms slices so that the rate holds whatever Python is doing next to it.
 *
 *   sender HOST PORT RATE SECONDS FILE    (FILE: one datagram per line, sent round-robin)
 *
 * Prints "sent N achieved R" on stdout at the end. Built by the bench with the system cc.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define MAXBATCH 1024

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: sender HOST PORT RATE SECONDS FILE\n");
        return 2;
    }
    long rate = atol(argv[3]);
    double seconds = atof(argv[4]);
    FILE *f = fopen(argv[5], "rb");
    if (!f) { perror(argv[5]); return 2; }
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc(size + 1);
    if (fread(buf, 1, size, f) != (size_t)size) { perror("read"); return 2; }
    fclose(f);
    long n = 0;
    for (long i = 0; i < size; i++) if (buf[i] == '\n') n++;
    struct iovec *lines = calloc(n + 1, sizeof *lines);
    long k = 0; char *start = buf;
    for (long i = 0; i < size; i++) {
        if (buf[i] == '\n') {
            if (&buf[i] > start) { lines[k].iov_base = start; lines[k].iov_len = &buf[i] - start; k++; }
            start = &buf[i + 1];
        }
    }
    n = k;
    if (n == 0) { fprintf(stderr, "no lines\n"); return 2; }

    int s = socket(AF_INET, SOCK_DGRAM, 0);
    int sndbuf = 4 << 20;
    setsockopt(s, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
    inet_pton(AF_INET, argv[1], &addr.sin_addr);
    if (connect(s, (struct sockaddr *)&addr, sizeof addr) < 0) { perror("connect"); return 2; }

    struct mmsghdr msgs[MAXBATCH];
    long total = (long)(rate * seconds), sent = 0, idx = 0;
    double t0 = now();
    while (sent < total) {
        long due = (long)((now() - t0) * rate) + rate / 1000;
        if (due > total) due = total;
        while (sent < due) {
            int batch = 0;
            while (batch < MAXBATCH && sent + batch < due) {
                memset(&msgs[batch], 0, sizeof msgs[batch]);
                msgs[batch].msg_hdr.msg_iov = &lines[idx];
                msgs[batch].msg_hdr.msg_iovlen = 1;
                idx = (idx + 1) % n;
                batch++;
            }
            int r = sendmmsg(s, msgs, batch, 0);
            if (r < 0) {
                if (errno == EAGAIN || errno == ENOBUFS || errno == ECONNREFUSED || errno == EINTR) continue;
                perror("sendmmsg");
                return 1;
            }
            /* datagrams not taken are sent again from where they stopped */
            idx = (idx - (batch - r) + n * MAXBATCH) % n;
            sent += r;
        }
        double ahead = (double)sent / rate - (now() - t0);
        if (ahead > 0) usleep((useconds_t)(ahead * 1e6));
    }
    double took = now() - t0;
    printf("sent %ld achieved %.0f\n", sent, sent / took);
    return 0;
}
