/*
 * fs.h: files and folders, and the one place every write to disk goes through.
 *
 * dm_write_all/dm_pwrite_all retry short writes and turn errors into messages
 * naming the file ("cache/ab12/x.spill: write failed: No space left on device").
 * For tests, DMICA_FAULT_ENOSPC_AFTER=N makes writes fail with ENOSPC once N
 * bytes in total have been written by this process (a full disk on demand).
 */
#ifndef DM_FS_H
#define DM_FS_H

#include "dm.h"
#include <sys/types.h>

int dm_pwrite_all(int fd, const void *buf, size_t n, int64_t off, const char *path);
int dm_write_all(int fd, const void *buf, size_t n, const char *path);
int dm_pread_all(int fd, void *buf, size_t n, int64_t off, const char *path);
/* Accounts n bytes against the fault budget: -1 (ENOSPC message) when exceeded.
 * Writers that bypass dm_pwrite_all (io_uring) call it before submitting. */
int dm_fault_check(size_t n, const char *path);

int dm_mkdir_p(const char *path);
int dm_rm_rf(const char *path); /* no error if missing */
int dm_fsync_path(const char *path); /* a file or a folder */
/* Durability (on by default): atomic writes, spills and dm_fsync_path fsync
 * what they write. Off, they skip the fsyncs but stay atomic (rename): for a
 * temporary cache that a crash may lose anyway (the commands' own runs). */
void dm_fs_set_durable(int on);
int dm_fs_durable(void);
/* Atomically moves folder tmp to final (rename; replaces an existing final by
 * renaming it aside first and removing it after). fsyncs the parent. */
int dm_dir_publish(const char *tmp, const char *final);
/* Whole file into memory (NUL-terminated); *len gets the size. NULL on error. */
char *dm_read_file(const char *path, size_t *len);
/* The same, refusing a file of more than max bytes (0: no limit) before reading
 * it, or, for a pipe or a device, once max + 1 bytes came; `what` names the
 * kind of file in messages ("pipeline file"). */
char *dm_read_file_max(const char *path, size_t max, const char *what, size_t *len);
/* Like dm_read_file for text that may come from a pipe: path "-" reads stdin,
 * a folder is an error naming it. */
char *dm_read_text(const char *path, size_t *len);
/* Writes data atomically (tmp + fsync + rename). */
int dm_write_file_atomic(const char *path, const void *data, size_t len);
/* The pieces of an atomic write, for writers that stream: dm_atomic_open creates
 * "<path>.tmp.<pid>" (truncated) and returns its fd, *tmp getting the malloc'd
 * name. dm_atomic_commit fsyncs and closes fd, renames tmp over path and fsyncs
 * the folder; dm_atomic_discard closes fd and removes tmp. Both free *tmp; on a
 * failed commit tmp is removed too. */
int dm_atomic_open(const char *path, char **tmp);
int dm_atomic_commit(int fd, char *tmp, const char *path);
void dm_atomic_discard(int fd, char *tmp);
/* A file's size and the XXH3-64 of its bytes: what a cache entry records of its
 * tensors and products (cache.c) and checks when they are used. */
typedef struct {
    int64_t size;
    uint64_t xxh3;
} dm_file_sum;
int dm_file_sum_of(const char *path, dm_file_sum *out);
/* 0 when got is want; else -1 with a DM_E_CORRUPT error naming path (a size
 * that differs, or a checksum mismatch). */
int dm_file_sum_check(const char *path, const dm_file_sum *want, const dm_file_sum *got);
/* Copies src to dst atomically (a temporary name, then rename): a reflink
 * (FICLONE) where the file system shares blocks copy-on-write, else
 * copy_file_range, else read/write. dst is never a hard link: writing to one
 * leaves the other as it was. */
int dm_copy_file(const char *src, const char *dst);
/* dm_copy_file that checks the bytes it copies against want (size and XXH3):
 * on a mismatch dst is left as it was and the error (DM_E_CORRUPT) names src.
 * Without a reflink the copy goes through read/write, so the bytes are read once. */
int dm_copy_file_checked(const char *src, const char *dst, const dm_file_sum *want);
/* Hard-links src to dst atomically (a copy across file systems): only for a src
 * that is removed right after (a temporary cache), since the two names share
 * their bytes. */
int dm_link_file(const char *src, const char *dst);
/* Renames src to dst (a copy, then unlink, across file systems); syncs the folder. */
int dm_move_file(const char *src, const char *dst);
int dm_file_exists(const char *path);
/* Content identity of a file: XXH3-128 of its bytes, as 32 hex digits, memoised
 * in the folder memo_dir (created when needed) by (device, inode, size, mtime)
 * so unchanged big inputs are not reread. memo_dir may be NULL (no memo). */
int dm_file_identity(const char *path, const char *memo_dir, char out[33]);

/* Bytes free to an unprivileged writer on the file system holding path (or
 * its nearest existing parent folder); -1 with dm_fail when it cannot be told. */
int64_t dm_fs_free_bytes(const char *path);

/* "12.0 MiB" (malloc'd). */
char *dm_human_bytes(int64_t b);

#endif
