/*
 * fs.c: files and folders, and the one gate every byte written to disk passes.
 *
 * Why one gate: a full disk is the failure a streaming engine meets most (a
 * 30 GB spill of residuals on a laptop), and it must end in a message naming the
 * file and nothing half-written left behind. dm_write_all and dm_pwrite_all retry
 * short writes and EINTR and turn every other error into "PATH: write failed:
 * REASON". Writers that bypass them (io_uring in spill.c) account their bytes
 * with dm_fault_check before they submit, so the fault injection below sees every
 * byte the process writes.
 *
 * Fault injection: DMICA_FAULT_ENOSPC_AFTER=N lets this process write N bytes in
 * total; the write that crosses the limit writes what still fits and then fails
 * with ENOSPC, as a real full disk does. The variable is read at every write (it
 * is cheap next to a system call) and the byte count restarts in a child after
 * fork(), so a test may setenv() it in a forked test body and get a fresh budget.
 *
 * Atomic publication: files are written under "<path>.tmp.<pid>", fsynced and
 * renamed; then the parent folder is fsynced so the rename itself survives a
 * crash. Folders are published the same way (dm_dir_publish), with
 * renameat2(RENAME_EXCHANGE) when the file system offers it so a reader never
 * sees a moment with no final folder at all.
 *
 * Copies (dm_copy_file) never share a name with their source: the results in
 * --out are the user's to edit, and an edit must not reach the cache. A reflink
 * (ioctl FICLONE, as `cp --reflink=auto` does) costs no bytes on file systems
 * that share blocks copy-on-write; elsewhere copy_file_range(2) lets the kernel
 * copy, and read/write is the last resort. dm_copy_file_checked sums the bytes
 * as they pass (XXH3-64, several GB/s) and refuses a source whose size or sum
 * is not the one recorded when it was written. Hard links (dm_link_file) are
 * only for sources about to be removed.
 *
 * File identity (cache keys over input files) is XXH3-128 of the content. Hashing
 * a 30 GB input costs seconds, so the result is memoised in
 * memo_dir/<key> (the cache's filehash folder), the key being a hash of (path, device, inode, size,
 * mtime in ns): any change to the file changes the key, and a stale memo is
 * simply never looked up again.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "fs.h"

#include <errno.h>
#include <stdint.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>
#include <xxhash.h>

/* ---- fault injection ---------------------------------------------------- */

static int64_t dm_fault_used; /* bytes written by this process (atomic) */
static pid_t dm_fault_pid;    /* the process dm_fault_used belongs to */

/* The injected limit in bytes, or -1 when none is set. */
static int64_t dm_fault_limit(void)
{
    const char *s = getenv("DMICA_FAULT_ENOSPC_AFTER");
    if (!s || !*s)
        return -1;
    char *end;
    long long v = strtoll(s, &end, 10);
    return (end == s || v < 0) ? -1 : (int64_t)v;
}

/* How many of the next n bytes may be written before the injected full disk
 * (n when no limit is set), and accounts them. */
static size_t dm_fault_take(size_t n)
{
    int64_t limit = dm_fault_limit();
    if (limit < 0)
        return n;
    pid_t pid = getpid();
    if (__atomic_load_n(&dm_fault_pid, __ATOMIC_RELAXED) != pid) {
        /* A fresh process (a forked test): its budget starts at zero. */
        __atomic_store_n(&dm_fault_used, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&dm_fault_pid, pid, __ATOMIC_RELAXED);
    }
    int64_t before = __atomic_fetch_add(&dm_fault_used, (int64_t)n, __ATOMIC_RELAXED);
    if (before >= limit)
        return 0;
    return before + (int64_t)n <= limit ? n : (size_t)(limit - before);
}

static int dm_fault_fail(const char *path)
{
    return dm_failc(DM_E_IO, "%s: write failed: %s (injected)", path, strerror(ENOSPC));
}

int dm_fault_check(size_t n, const char *path)
{
    return dm_fault_take(n) < n ? dm_fault_fail(path) : 0;
}

/* ---- reads and writes --------------------------------------------------- */

/* off < 0: write at the file position (write(2)), else pwrite(2) at off. */
static int dm_write_at(int fd, const void *buf, size_t n, int64_t off, const char *path)
{
    const char *p = buf;
    size_t allowed = dm_fault_take(n);
    size_t left = allowed;
    while (left > 0) {
        ssize_t k = off < 0 ? write(fd, p, left) : pwrite(fd, p, left, (off_t)off);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            return dm_failc(DM_E_IO, "%s: write failed: %s", path, strerror(errno));
        }
        if (k == 0) /* never for regular files; avoid spinning if it happens */
            return dm_failc(DM_E_IO, "%s: write failed: the system wrote 0 of %zu bytes", path, left);
        p += k;
        left -= (size_t)k;
        if (off >= 0)
            off += k;
    }
    return allowed < n ? dm_fault_fail(path) : 0;
}

int dm_pwrite_all(int fd, const void *buf, size_t n, int64_t off, const char *path)
{
    if (off < 0)
        return dm_failc(DM_E_INTERNAL, "%s: write at negative offset %lld", path, (long long)off);
    return dm_write_at(fd, buf, n, off, path);
}

int dm_write_all(int fd, const void *buf, size_t n, const char *path)
{
    return dm_write_at(fd, buf, n, -1, path);
}

int dm_pread_all(int fd, void *buf, size_t n, int64_t off, const char *path)
{
    char *p = buf;
    int64_t start = off;
    while (n > 0) {
        ssize_t k = pread(fd, p, n, (off_t)off);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            return dm_failc(DM_E_IO, "%s: read failed at offset %lld: %s", path, (long long)off,
                            strerror(errno));
        }
        if (k == 0)
            return dm_failc(DM_E_CORRUPT, "%s: unexpected end of file at offset %lld (wanted %zu more bytes "
                            "from offset %lld)", path, (long long)off, n, (long long)start);
        p += k;
        n -= (size_t)k;
        off += k;
    }
    return 0;
}

/* ---- folders ------------------------------------------------------------ */

int dm_mkdir_p(const char *path)
{
    if (!path || !*path)
        return dm_failc(DM_E_INTERNAL, "mkdir: empty path");
    char *buf = dm_xstrdup(path);
    int rc = 0;
    /* Create each prefix in turn; EEXIST is fine as long as it is a folder. */
    for (char *p = buf + 1;; p++) {
        if (*p != '/' && *p != 0)
            continue;
        char saved = *p;
        *p = 0;
        if (mkdir(buf, 0777) < 0 && errno != EEXIST) {
            rc = dm_failc(DM_E_IO, "%s: cannot create folder: %s", buf, strerror(errno));
            break;
        }
        *p = saved;
        if (!saved)
            break;
    }
    if (rc == 0) {
        struct stat st;
        if (stat(path, &st) < 0)
            rc = dm_failc(DM_E_IO, "%s: cannot create folder: %s", path, strerror(errno));
        else if (!S_ISDIR(st.st_mode))
            rc = dm_failc(DM_E_IO, "%s: cannot create folder: a file of that name exists", path);
    }
    free(buf);
    return rc;
}

/* nftw callbacks cannot take a context argument; the first failure is kept here. */
static _Thread_local int dm_rm_errno;
static _Thread_local char dm_rm_path[PATH_MAX];

static int dm_rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)ftw;
    int rc = (flag == FTW_DP) ? rmdir(path) : unlink(path);
    if (rc < 0 && errno != ENOENT && !dm_rm_errno) {
        dm_rm_errno = errno;
        snprintf(dm_rm_path, sizeof dm_rm_path, "%s", path);
    }
    return 0; /* keep removing what can be removed */
}

int dm_rm_rf(const char *path)
{
    struct stat st;
    if (lstat(path, &st) < 0) {
        if (errno == ENOENT)
            return 0;
        return dm_failc(DM_E_IO, "%s: cannot remove: %s", path, strerror(errno));
    }
    if (!S_ISDIR(st.st_mode)) {
        if (unlink(path) < 0 && errno != ENOENT)
            return dm_failc(DM_E_IO, "%s: cannot remove: %s", path, strerror(errno));
        return 0;
    }
    dm_rm_errno = 0;
    /* FTW_DEPTH: contents before their folder; FTW_PHYS: never follow links out. */
    if (nftw(path, dm_rm_one, 32, FTW_DEPTH | FTW_PHYS | FTW_MOUNT) < 0 && errno != ENOENT)
        return dm_failc(DM_E_IO, "%s: cannot remove: %s", path, strerror(errno));
    if (dm_rm_errno)
        return dm_failc(DM_E_IO, "%s: cannot remove: %s", dm_rm_path, strerror(dm_rm_errno));
    return 0;
}

static int dm_durable = 1;

void dm_fs_set_durable(int on) { dm_durable = on; }
int dm_fs_durable(void) { return dm_durable; }

int dm_fsync_path(const char *path)
{
    if (!dm_durable)
        return 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return dm_failc(DM_E_IO, "%s: cannot open to sync: %s", path, strerror(errno));
    int rc = 0;
    /* Some file systems refuse fsync on folders (EINVAL): nothing to make durable. */
    if (fsync(fd) < 0 && errno != EINVAL && errno != EROFS)
        rc = dm_failc(DM_E_IO, "%s: fsync failed: %s", path, strerror(errno));
    close(fd);
    return rc;
}

/* The folder holding path ("." when it has no slash); free with free(3). */
static char *dm_parent_dir(const char *path)
{
    const char *slash = strrchr(path, '/');
    if (!slash)
        return dm_xstrdup(".");
    if (slash == path)
        return dm_xstrdup("/");
    char *d = dm_xmalloc((size_t)(slash - path) + 1);
    memcpy(d, path, (size_t)(slash - path));
    d[slash - path] = 0;
    return d;
}

static int dm_fsync_parent(const char *path)
{
    char *dir = dm_parent_dir(path);
    int rc = dm_fsync_path(dir);
    free(dir);
    return rc;
}

int dm_dir_publish(const char *tmp, const char *final)
{
    struct stat st;
    if (stat(tmp, &st) < 0 || !S_ISDIR(st.st_mode))
        return dm_failc(DM_E_IO, "%s: cannot publish as %s: not a folder", tmp, final);
    if (lstat(final, &st) < 0) {
        if (errno != ENOENT)
            return dm_failc(DM_E_IO, "%s: %s", final, strerror(errno));
        if (rename(tmp, final) < 0)
            return dm_failc(DM_E_IO, "%s: cannot rename to %s: %s", tmp, final, strerror(errno));
    } else if (renameat2(AT_FDCWD, tmp, AT_FDCWD, final, RENAME_EXCHANGE) == 0) {
        /* tmp now holds the old contents. */
        if (dm_rm_rf(tmp) < 0)
            dm_warn("%s", dm_error());
    } else {
        /* No RENAME_EXCHANGE here: move the old folder aside, then rename. A
         * reader may find no final folder for that moment, never a mixed one. */
        char *aside = dm_xasprintf("%s.old.%ld", final, (long)getpid());
        if (dm_rm_rf(aside) < 0 || rename(final, aside) < 0) {
            int e = errno;
            free(aside);
            return dm_failc(DM_E_IO, "%s: cannot move the previous version aside: %s", final, strerror(e));
        }
        if (rename(tmp, final) < 0) {
            int e = errno;
            if (rename(aside, final) < 0) /* put the old one back */
                dm_warn("%s: could not restore from %s: %s", final, aside, strerror(errno));
            free(aside);
            return dm_failc(DM_E_IO, "%s: cannot rename to %s: %s", tmp, final, strerror(e));
        }
        if (dm_rm_rf(aside) < 0)
            dm_warn("%s", dm_error());
        free(aside);
    }
    int rc = dm_fsync_parent(final);
    char *ptmp = dm_parent_dir(tmp), *pfinal = dm_parent_dir(final);
    if (rc == 0 && strcmp(ptmp, pfinal))
        rc = dm_fsync_path(ptmp);
    free(ptmp);
    free(pfinal);
    return rc;
}

/* ---- whole files -------------------------------------------------------- */

char *dm_read_file_max(const char *path, size_t max, const char *what, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        dm_failc(DM_E_IO, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) < 0) {
        dm_failc(DM_E_IO, "%s: cannot stat: %s", path, strerror(errno));
        close(fd);
        return NULL;
    }
    if (S_ISDIR(st.st_mode)) {
        dm_failc(DM_E_IO, "%s: is a folder, not a %s", path, what);
        close(fd);
        return NULL;
    }
    if (max && S_ISREG(st.st_mode) && (uintmax_t)st.st_size > max) {
        dm_fail("%s: %jd bytes is too large for a %s (at most %zu MiB)", path, (intmax_t)st.st_size, what,
                max >> 20);
        close(fd);
        return NULL;
    }
    /* st_size is a hint only (pipes and /proc files say 0): read to EOF, or
     * to max + 1 bytes. */
    size_t cap = st.st_size > 0 ? (size_t)st.st_size + 2 : 4096, n = 0;
    char *buf = dm_xmalloc(cap);
    for (;;) {
        if (n + 1 >= cap) {
            cap = max && cap * 2 > max + 2 ? max + 2 : cap * 2;
            buf = dm_xrealloc(buf, cap);
        }
        ssize_t k = read(fd, buf + n, cap - n - 1);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0) {
            dm_failc(DM_E_IO, "%s: read failed: %s", path, strerror(errno));
            break;
        }
        if (k == 0) {
            close(fd);
            buf[n] = 0;
            if (len)
                *len = n;
            return buf;
        }
        if ((n += (size_t)k) > max && max) {
            dm_fail("%s: more than %zu MiB, too large for a %s", path, max >> 20, what);
            break;
        }
    }
    free(buf);
    close(fd);
    return NULL;
}

char *dm_read_file(const char *path, size_t *len) { return dm_read_file_max(path, 0, "file", len); }

int dm_atomic_open(const char *path, char **tmp)
{
    *tmp = dm_xasprintf("%s.tmp.%ld", path, (long)getpid());
    int fd = open(*tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    if (fd < 0) {
        dm_failc(DM_E_IO, "%s: cannot create: %s", *tmp, strerror(errno));
        free(*tmp);
        *tmp = NULL;
    }
    return fd;
}

int dm_atomic_commit(int fd, char *tmp, const char *path)
{
    int rc = 0;
    if (dm_durable && fsync(fd) < 0)
        rc = dm_failc(DM_E_IO, "%s: fsync failed: %s", tmp, strerror(errno));
    if (close(fd) < 0 && rc == 0)
        rc = dm_failc(DM_E_IO, "%s: close failed: %s", tmp, strerror(errno));
    if (rc == 0 && rename(tmp, path) < 0)
        rc = dm_failc(DM_E_IO, "%s: cannot rename to %s: %s", tmp, path, strerror(errno));
    if (rc < 0)
        unlink(tmp);
    else
        rc = dm_fsync_parent(path);
    free(tmp);
    return rc;
}

void dm_atomic_discard(int fd, char *tmp)
{
    if (fd >= 0)
        close(fd);
    if (tmp)
        unlink(tmp);
    free(tmp);
}

int dm_write_file_atomic(const char *path, const void *data, size_t len)
{
    char *tmp;
    int fd = dm_atomic_open(path, &tmp);
    if (fd < 0)
        return -1;
    if (dm_write_all(fd, data, len, tmp) < 0) {
        dm_atomic_discard(fd, tmp);
        return -1;
    }
    return dm_atomic_commit(fd, tmp, path);
}

/* ---- copies, checksums and moves ------------------------------------------ */

static void dm_sum_hex(uint64_t h, char out[17]) { snprintf(out, 17, "%016llx", (unsigned long long)h); }

int dm_file_sum_of(const char *path, dm_file_sum *out)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return dm_failc(DM_E_IO, "%s: cannot open: %s", path, strerror(errno));
    posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    XXH3_state_t *st = XXH3_createState();
    if (!st)
        dm_oom(0, "a hash state");
    XXH3_64bits_reset(st);
    size_t cap = (size_t)4 << 20;
    char *buf = dm_xmalloc(cap);
    int64_t size = 0;
    int rc = 0;
    for (;;) {
        ssize_t k = read(fd, buf, cap);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            rc = dm_failc(DM_E_IO, "%s: read failed: %s", path, strerror(errno));
            break;
        }
        if (k == 0)
            break;
        XXH3_64bits_update(st, buf, (size_t)k);
        size += k;
    }
    out->size = size;
    out->xxh3 = XXH3_64bits_digest(st);
    free(buf);
    XXH3_freeState(st);
    close(fd);
    return rc;
}

int dm_file_sum_check(const char *path, const dm_file_sum *want, const dm_file_sum *got)
{
    if (got->size != want->size)
        return dm_failc(DM_E_CORRUPT, "%s: %lld bytes, but %lld were recorded when it was written", path,
                        (long long)got->size, (long long)want->size);
    if (got->xxh3 != want->xxh3) {
        char a[17], b[17];
        dm_sum_hex(want->xxh3, a);
        dm_sum_hex(got->xxh3, b);
        return dm_failc(DM_E_CORRUPT, "%s: checksum mismatch (XXH3 %s, recorded %s): the file changed after it "
                        "was written", path, b, a);
    }
    return 0;
}

/* The bytes of in, from offset 0, into out: copy_file_range (the kernel copies,
 * and may share or offload blocks), else read/write. Sums what it copies when
 * sum is not NULL (then read/write only: the bytes pass through here once). */
static int dm_copy_bytes(int in, int out, const char *src, const char *tmp, dm_file_sum *sum)
{
    if (!sum) {
        struct stat st;
        if (fstat(in, &st) < 0)
            return dm_failc(DM_E_IO, "%s: cannot stat: %s", src, strerror(errno));
        int64_t left = st.st_size, done = 0;
        while (left > 0) {
            size_t want = left > ((int64_t)1 << 30) ? (size_t)1 << 30 : (size_t)left;
            if (dm_fault_check(want, tmp) < 0)
                return -1;
            ssize_t k = copy_file_range(in, NULL, out, NULL, want, 0);
            if (k < 0 && errno == EINTR)
                continue;
            if (k <= 0)
                break; /* not supported here (or the file shrank): copy by hand from where it stopped */
            left -= k;
            done += k;
        }
        if (left == 0)
            return 0;
        if (lseek(in, done, SEEK_SET) < 0 || lseek(out, done, SEEK_SET) < 0)
            return dm_failc(DM_E_IO, "%s: cannot seek: %s", src, strerror(errno));
    }
    XXH3_state_t *st = NULL;
    if (sum) {
        if (!(st = XXH3_createState()))
            dm_oom(0, "a hash state");
        XXH3_64bits_reset(st);
        sum->size = 0;
    }
    posix_fadvise(in, 0, 0, POSIX_FADV_SEQUENTIAL);
    size_t cap = (size_t)4 << 20;
    char *buf = dm_xmalloc(cap);
    int rc = 0;
    for (;;) {
        ssize_t k = read(in, buf, cap);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            rc = dm_failc(DM_E_IO, "%s: read failed: %s", src, strerror(errno));
            break;
        }
        if (k == 0)
            break;
        if (st) {
            XXH3_64bits_update(st, buf, (size_t)k);
            sum->size += k;
        }
        if ((rc = dm_write_all(out, buf, (size_t)k, tmp)) < 0)
            break;
    }
    if (st) {
        sum->xxh3 = XXH3_64bits_digest(st);
        XXH3_freeState(st);
    }
    free(buf);
    return rc;
}

int dm_copy_file_checked(const char *src, const char *dst, const dm_file_sum *want)
{
    int in = open(src, O_RDONLY | O_CLOEXEC);
    if (in < 0)
        return dm_failc(DM_E_IO, "%s: cannot open: %s", src, strerror(errno));
    char *tmp;
    int out = dm_atomic_open(dst, &tmp);
    if (out < 0) {
        close(in);
        return -1;
    }
    dm_file_sum got;
    int rc;
    /* A reflink shares the blocks copy-on-write (btrfs, XFS, bcachefs): no bytes
     * move, and a later write to either file leaves the other as it was. */
    if (ioctl(out, FICLONE, in) == 0)
        rc = want ? dm_file_sum_of(src, &got) : 0;
    else
        rc = dm_copy_bytes(in, out, src, tmp, want ? &got : NULL);
    close(in);
    if (!rc && want)
        rc = dm_file_sum_check(src, want, &got);
    if (rc < 0) {
        dm_atomic_discard(out, tmp);
        return dm_error_code() == DM_E_CORRUPT ? -1 : dm_fail_prefix("copying %s to %s", src, dst);
    }
    return dm_atomic_commit(out, tmp, dst);
}

int dm_copy_file(const char *src, const char *dst) { return dm_copy_file_checked(src, dst, NULL); }

int dm_link_file(const char *src, const char *dst)
{
    char *tmp = dm_xasprintf("%s.tmp.%ld", dst, (long)getpid());
    unlink(tmp);
    if (link(src, tmp) == 0) {
        if (rename(tmp, dst) < 0) {
            dm_failc(DM_E_IO, "%s: cannot rename to %s: %s", tmp, dst, strerror(errno));
            unlink(tmp);
            free(tmp);
            return -1;
        }
        /* When dst already was a link to src, rename does nothing and tmp stays. */
        unlink(tmp);
        free(tmp);
        return dm_fsync_parent(dst);
    }
    free(tmp);
    return dm_copy_file(src, dst);
}

int dm_move_file(const char *src, const char *dst)
{
    if (rename(src, dst) == 0)
        return dm_fsync_parent(dst);
    if (errno != EXDEV)
        return dm_failc(DM_E_IO, "%s: cannot rename to %s: %s", src, dst, strerror(errno));
    if (dm_copy_file(src, dst) < 0)
        return -1;
    unlink(src);
    return 0;
}

int dm_file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* ---- content identity --------------------------------------------------- */

static void dm_hex128(XXH128_hash_t h, char out[33])
{
    XXH128_canonical_t c;
    XXH128_canonicalFromHash(&c, h); /* big-endian: the digits xxh128sum prints */
    for (int i = 0; i < 16; i++)
        snprintf(out + 2 * i, 3, "%02x", c.digest[i]);
}

static int dm_is_hex32(const char *s)
{
    for (int i = 0; i < 32; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return 0;
    return 1;
}

/* XXH3-128 of the whole file behind fd. */
static int dm_hash_fd(int fd, const char *path, char out[33])
{
    XXH3_state_t *st = XXH3_createState();
    if (!st)
        return dm_failc(DM_E_NOMEM, "%s: out of memory for the hash state", path);
    XXH3_128bits_reset(st);
    posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    size_t cap = (size_t)8 << 20;
    char *buf = dm_xmalloc(cap);
    int rc = 0;
    for (;;) {
        ssize_t k = read(fd, buf, cap);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            rc = dm_failc(DM_E_IO, "%s: read failed: %s", path, strerror(errno));
            break;
        }
        if (k == 0)
            break;
        XXH3_128bits_update(st, buf, (size_t)k);
    }
    if (rc == 0)
        dm_hex128(XXH3_128bits_digest(st), out);
    free(buf);
    XXH3_freeState(st);
    return rc;
}

int dm_file_identity(const char *path, const char *memo_dir, char out[33])
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return dm_failc(DM_E_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) < 0) {
        close(fd);
        return dm_failc(DM_E_IO, "%s: cannot stat: %s", path, strerror(errno));
    }
    if (S_ISDIR(st.st_mode)) {
        close(fd);
        return dm_failc(DM_E_IO, "%s: is a folder, not a file", path);
    }

    char *memo = NULL;
    if (memo_dir) {
        char *what = dm_xasprintf("%s\n%llu\n%llu\n%lld\n%lld.%09ld", path,
                                  (unsigned long long)st.st_dev, (unsigned long long)st.st_ino,
                                  (long long)st.st_size, (long long)st.st_mtim.tv_sec,
                                  st.st_mtim.tv_nsec);
        char key[33];
        dm_hex128(XXH3_128bits(what, strlen(what)), key);
        free(what);
        memo = dm_xasprintf("%s/%s", memo_dir, key);
        size_t len;
        char *text = dm_file_exists(memo) ? dm_read_file(memo, &len) : NULL;
        if (text && len >= 32 && dm_is_hex32(text)) {
            memcpy(out, text, 32);
            out[32] = 0;
            free(text);
            free(memo);
            close(fd);
            return 0;
        }
        free(text); /* absent or damaged: recompute and rewrite */
    }

    int rc = dm_hash_fd(fd, path, out);
    struct stat after;
    /* A file modified while being hashed gets no memo: the hash may mix versions. */
    int changed = fstat(fd, &after) < 0 || after.st_size != st.st_size ||
                  after.st_mtim.tv_sec != st.st_mtim.tv_sec ||
                  after.st_mtim.tv_nsec != st.st_mtim.tv_nsec;
    close(fd);
    if (rc == 0 && memo && !changed) {
        /* The memo is an optimisation: failing to write it must not fail the run. */
        char line[34];
        memcpy(line, out, 32);
        line[32] = '\n';
        if (dm_mkdir_p(memo_dir) < 0 || dm_write_file_atomic(memo, line, 33) < 0)
            dm_warn("could not remember the hash of %s: %s", path, dm_error());
    }
    free(memo);
    return rc;
}

char *dm_read_text(const char *path, size_t *len)
{
    int fd = strcmp(path, "-") == 0 ? STDIN_FILENO : open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        dm_failc(DM_E_IO, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) == 0 && S_ISDIR(st.st_mode)) {
        dm_failc(DM_E_IO, "%s: is a folder, not a file", path);
        close(fd);
        return NULL;
    }
    size_t cap = (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) ? (size_t)st.st_size : 0) + 4096;
    size_t n = 0;
    char *buf = dm_xmalloc(cap);
    for (;;) {
        if (cap - n < 2) {
            cap *= 2;
            buf = dm_xrealloc(buf, cap);
        }
        ssize_t r = read(fd, buf + n, cap - n - 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            dm_failc(DM_E_IO, "%s: read failed: %s", path, strerror(errno));
            free(buf);
            if (fd != STDIN_FILENO)
                close(fd);
            return NULL;
        }
        if (r == 0)
            break;
        n += (size_t)r;
    }
    if (fd != STDIN_FILENO)
        close(fd);
    buf[n] = 0;
    *len = n;
    return buf;
}

int64_t dm_fs_free_bytes(const char *path)
{
    char *p = dm_xstrdup(path);
    struct statvfs st;
    while (statvfs(p, &st)) {
        char *slash = strrchr(p, '/');
        if (errno != ENOENT || !slash || slash == p) {
            if (errno == ENOENT) { /* a relative path: the current folder */
                free(p);
                p = dm_xstrdup(".");
                if (!statvfs(p, &st))
                    break;
            }
            dm_failc(DM_E_IO, "%s: cannot tell the free space: %s", path, strerror(errno));
            free(p);
            return -1;
        }
        *slash = 0;
    }
    free(p);
    return (int64_t)st.f_bavail * (int64_t)st.f_frsize;
}

/* "12.0 MiB" (malloc'd). */
char *dm_human_bytes(int64_t b)
{
    static const char *units[] = {"KiB", "MiB", "GiB", "TiB", "PiB"};
    if (b < 1024)
        return dm_xasprintf("%lld B", (long long)b);
    double v = (double)b / 1024;
    int u = 0;
    while (v >= 1024 && u < 4)
        v /= 1024, u++;
    return dm_xasprintf("%.1f %s", v, units[u]);
}
