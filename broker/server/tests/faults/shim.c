/* Storage fault injection for Warren's tests, loaded with LD_PRELOAD.
 *
 * While a file named after a fault exists in $WARREN_FAULTS_DIR, the matching call fails:
 *   fsync      fsync() and fdatasync() fail with EIO
 *   write      write() to a regular file fails with ENOSPC (after writing half of it once
 *              more than 1 octet is asked, as a filling disk does)
 *   fallocate  posix_fallocate() fails with ENOSPC
 *   pread      pread() of a regular file fails with EIO (an unreadable sector)
 * Each failure is counted in "$WARREN_FAULTS_DIR/<fault>.hits" (one octet appended per hit).
 * Sockets and pipes are never touched: only regular files fail.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

static int armed(const char *fault) {
    const char *dir = getenv("WARREN_FAULTS_DIR");
    if (!dir) return 0;
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", dir, fault);
    if (access(path, F_OK) != 0) return 0;
    snprintf(path, sizeof path, "%s/%s.hits", dir, fault);
    static ssize_t (*real_write)(int, const void *, size_t);
    if (!real_write) real_write = dlsym(RTLD_NEXT, "write");
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
        real_write(fd, "x", 1);
        close(fd);
    }
    return 1;
}

static int regular(int fd) {
    struct stat st;
    /* Standard streams stay out of it: the broker log is how a test sees what happened. */
    return fd > 2 && fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
}

int fsync(int fd) {
    static int (*real)(int);
    if (!real) real = dlsym(RTLD_NEXT, "fsync");
    if (regular(fd) && armed("fsync")) {
        errno = EIO;
        return -1;
    }
    return real(fd);
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (!real) real = dlsym(RTLD_NEXT, "fdatasync");
    if (regular(fd) && armed("fsync")) {
        errno = EIO;
        return -1;
    }
    return real(fd);
}

ssize_t write(int fd, const void *buf, size_t n) {
    static ssize_t (*real)(int, const void *, size_t);
    if (!real) real = dlsym(RTLD_NEXT, "write");
    if (regular(fd) && armed("write")) {
        if (n > 1) {
            /* A torn write: half lands, then the disk is full. */
            ssize_t done = real(fd, buf, n / 2);
            if (done > 0) return done;
        }
        errno = ENOSPC;
        return -1;
    }
    return real(fd, buf, n);
}

int posix_fallocate(int fd, off_t offset, off_t len) {
    static int (*real)(int, off_t, off_t);
    if (!real) real = dlsym(RTLD_NEXT, "posix_fallocate");
    if (armed("fallocate")) return ENOSPC;
    return real(fd, offset, len);
}

int posix_fallocate64(int fd, off_t offset, off_t len) {
    static int (*real)(int, off_t, off_t);
    if (!real) real = dlsym(RTLD_NEXT, "posix_fallocate64");
    if (armed("fallocate")) return ENOSPC;
    return real(fd, offset, len);
}

ssize_t pread(int fd, void *buf, size_t n, off_t offset) {
    static ssize_t (*real)(int, void *, size_t, off_t);
    if (!real) real = dlsym(RTLD_NEXT, "pread");
    if (regular(fd) && armed("pread")) {
        errno = EIO;
        return -1;
    }
    return real(fd, buf, n, offset);
}

ssize_t pread64(int fd, void *buf, size_t n, off_t offset) {
    static ssize_t (*real)(int, void *, size_t, off_t);
    if (!real) real = dlsym(RTLD_NEXT, "pread64");
    if (regular(fd) && armed("pread")) {
        errno = EIO;
        return -1;
    }
    return real(fd, buf, n, offset);
}
