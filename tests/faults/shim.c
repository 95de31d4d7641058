/*
 * Fault injection by LD_PRELOAD for the reliability suite: a slow disk and a wall clock that
 * steps. Built and loaded by the end-to-end tests (tests/src/fault.rs); never part of the
 * product.
 *
 *   TOLLGATE_SHIM_FSYNC_MS=N     fsync and fdatasync each take N ms longer (a slow disk).
 *   TOLLGATE_SHIM_CLOCK_FILE=F   the wall clock (CLOCK_REALTIME, gettimeofday, time) is moved
 *                                by the signed milliseconds written in F, read again at most
 *                                every 20 ms, so a test steps the clock by rewriting F. The
 *                                monotonic clock is left alone, as a real step leaves it.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static long long env_ms(const char *name) {
    const char *value = getenv(name);
    return value ? atoll(value) : 0;
}

static void pause_ms(long long ms) {
    if (ms > 0) {
        struct timespec wait = {ms / 1000, (ms % 1000) * 1000000L};
        nanosleep(&wait, NULL);
    }
}

int fsync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    pause_ms(env_ms("TOLLGATE_SHIM_FSYNC_MS"));
    return real(fd);
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    pause_ms(env_ms("TOLLGATE_SHIM_FSYNC_MS"));
    return real(fd);
}

static int (*real_clock_gettime)(clockid_t, struct timespec *);

static long long monotonic_ms(void) {
    struct timespec now;
    real_clock_gettime(CLOCK_MONOTONIC, &now);
    return now.tv_sec * 1000LL + now.tv_nsec / 1000000;
}

/* The step in force, in ms. Racing threads may both read the file; either result is right. */
static long long offset_ms(void) {
    static volatile long long cached, read_at = -1000;
    const char *path = getenv("TOLLGATE_SHIM_CLOCK_FILE");
    if (!path) return 0;
    long long now = monotonic_ms();
    if (now - read_at >= 20) {
        char text[32] = {0};
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
            ssize_t n = read(fd, text, sizeof text - 1);
            close(fd);
            if (n > 0) cached = atoll(text);
        }
        read_at = now;
    }
    return cached;
}

int clock_gettime(clockid_t clock, struct timespec *out) {
    if (!real_clock_gettime)
        real_clock_gettime = (int (*)(clockid_t, struct timespec *))dlsym(RTLD_NEXT, "clock_gettime");
    int result = real_clock_gettime(clock, out);
    if (result == 0 && (clock == CLOCK_REALTIME || clock == CLOCK_REALTIME_COARSE)) {
        long long step = offset_ms();
        long long ns = out->tv_nsec + (step % 1000) * 1000000LL;
        out->tv_sec += step / 1000 + ns / 1000000000LL - (ns < 0 ? 1 : 0);
        out->tv_nsec = (ns % 1000000000LL + 1000000000LL) % 1000000000LL;
    }
    return result;
}

int gettimeofday(struct timeval *out, void *zone) {
    struct timespec now;
    (void)zone;
    if (clock_gettime(CLOCK_REALTIME, &now) != 0) return -1;
    out->tv_sec = now.tv_sec;
    out->tv_usec = now.tv_nsec / 1000;
    return 0;
}

time_t time(time_t *out) {
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    if (out) *out = now.tv_sec;
    return now.tv_sec;
}
