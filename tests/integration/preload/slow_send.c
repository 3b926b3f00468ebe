/* A test shim, loaded into starlingd with LD_PRELOAD: after each send()
 * of a STARTTLS <proceed/> or of a TLS handshake record holding a
 * ServerHello, the daemon sleeps STARLING_TEST_SLOW_AFTER_HELLO_MS
 * milliseconds. The client's answer (its ClientHello; its Finished and the
 * stream header it sends right behind) is then already in the socket when
 * the daemon reads again, as on a loaded server whose client is close by:
 * the handshake runs to its end within the call that sent <proceed/>, and
 * reads the client's first application data with its Finished. Nothing
 * else changes. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>

ssize_t send(int fd, const void *buf, size_t len, int flags)
{
    static ssize_t (*real)(int, const void *, size_t, int);
    if (!real) real = (ssize_t (*)(int, const void *, size_t, int))dlsym(RTLD_NEXT, "send");
    ssize_t n = real(fd, buf, len, flags);
    const unsigned char *p = buf;
    /* record type 22 (handshake), version 3.x, first message ServerHello (2) */
    int hello = n > 5 && p[0] == 22 && p[1] == 3 && p[5] == 2;
    int proceed = n >= 8 && memcmp(p, "<proceed", 8) == 0;
    if (hello || proceed) {
        const char *ms = getenv("STARLING_TEST_SLOW_AFTER_HELLO_MS");
        long v = ms ? strtol(ms, NULL, 10) : 0;
        if (v > 0) {
            struct timespec t = {v / 1000, (v % 1000) * 1000000L};
            while (nanosleep(&t, &t) != 0) {}
        }
    }
    return n;
}
