/*
 * test_dist.c: the MPI layer (engine/core/dist.c) with any number of ranks.
 *
 * One program for every case: `make test-unit` runs it as a plain process
 * (rank 0 of 1: MPI must stay untouched), `make test-mpi` under
 * `mpirun -np 1|2|3`. It is plain C, not Check: Check forks each case, and a
 * forked child cannot use its parent's MPI. Every rank runs every test in the
 * same order (the calls are collective); a failed CHECK prints and counts but
 * never changes what the rank calls next, so one failure cannot hang the rest.
 * At the end the failure counts are gathered and every rank exits 1 if any
 * rank failed.
 *
 * The entries are made of files whose bytes follow from (key, file name), so
 * any rank can check bytes it received without asking the sender.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dist.h"
#include "dm.h"
#include "fs.h"

static int rank, size, failures;

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            failures++;                                                                            \
            fprintf(stderr, "rank %d: %s:%d: CHECK(%s) failed: ", rank, __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
        }                                                                                          \
    } while (0)

/* ---- entries whose bytes anyone can check ---------------------------------- */

typedef struct {
    const char *path; /* relative to the entry; "node.json" is written last */
    int64_t size;
    unsigned mode;
} file_spec;

typedef struct {
    const char *key;
    const char *dirs[4]; /* made first, mode 0750 */
    file_spec files[8];
} entry_spec;

/* The bytes of key/path at offset 0..n: xorshift64 from a seed of both names. */
static void fill(char *buf, size_t n, const char *key, const char *path)
{
    uint64_t x = 1469598103934665603ull;
    for (const char *s = key; *s; s++)
        x = (x ^ (unsigned char)*s) * 1099511628211ull;
    for (const char *s = path; *s; s++)
        x = (x ^ (unsigned char)*s) * 1099511628211ull;
    for (size_t i = 0; i < n; i += 8) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        memcpy(buf + i, &x, n - i < 8 ? n - i : 8);
    }
}

static void make_entry(const char *cache, const entry_spec *e, int complete)
{
    char *dir = dm_xasprintf("%s/%s", cache, e->key);
    CHECK(dm_mkdir_p(dir) == 0, "%s", dm_error());
    for (int i = 0; i < 4 && e->dirs[i]; i++) {
        char *d = dm_xasprintf("%s/%s", dir, e->dirs[i]);
        CHECK(dm_mkdir_p(d) == 0 && chmod(d, 0750) == 0, "%s", d);
        free(d);
    }
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < 8 && e->files[i].path; i++) {
            const file_spec *f = &e->files[i];
            int is_node = !strcmp(f->path, "node.json");
            if (is_node != pass || (is_node && !complete))
                continue;
            char *path = dm_xasprintf("%s/%s", dir, f->path), *buf = dm_xmalloc((size_t)f->size + 1);
            fill(buf, (size_t)f->size, e->key, f->path);
            int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
            CHECK(fd >= 0 && dm_write_all(fd, buf, (size_t)f->size, path) == 0 && fchmod(fd, f->mode) == 0,
                  "writing %s", path);
            if (fd >= 0)
                close(fd);
            free(buf), free(path);
        }
    free(dir);
}

/* The entry is in cache, complete, with exactly the spec's files, bytes and modes. */
static void check_entry(const char *cache, const entry_spec *e)
{
    char *dir = dm_xasprintf("%s/%s", cache, e->key);
    int nfiles = 0;
    for (int i = 0; i < 8 && e->files[i].path; i++, nfiles++) {
        const file_spec *f = &e->files[i];
        char *path = dm_xasprintf("%s/%s", dir, f->path);
        struct stat st;
        if (stat(path, &st) < 0) {
            CHECK(0, "%s: %s", path, strerror(errno));
            free(path);
            continue;
        }
        CHECK(st.st_size == f->size, "%s: %lld bytes, expected %lld", path, (long long)st.st_size,
              (long long)f->size);
        CHECK((st.st_mode & 07777) == f->mode, "%s: mode %o, expected %o", path, st.st_mode & 07777, f->mode);
        size_t len = 0;
        char *got = dm_read_file(path, &len), *want = dm_xmalloc((size_t)f->size + 1);
        fill(want, (size_t)f->size, e->key, f->path);
        CHECK(got && len == (size_t)f->size && memcmp(got, want, len) == 0, "%s: bytes differ", path);
        free(got), free(want), free(path);
    }
    for (int i = 0; i < 4 && e->dirs[i]; i++) {
        char *d = dm_xasprintf("%s/%s", dir, e->dirs[i]);
        struct stat st;
        CHECK(stat(d, &st) == 0 && S_ISDIR(st.st_mode) && (st.st_mode & 07777) == 0750, "%s: not a 0750 folder", d);
        free(d);
    }
    /* nothing more than the spec: count regular files with find */
    char *cmd = dm_xasprintf("find '%s' -type f | wc -l", dir);
    FILE *p = popen(cmd, "r");
    int n = -1;
    if (p) {
        if (fscanf(p, "%d", &n) != 1)
            n = -1;
        pclose(p);
    }
    CHECK(n == nfiles, "%s holds %d files, expected %d", dir, n, nfiles);
    free(cmd), free(dir);
}

static int has_entry(const char *cache, const char *key)
{
    char *node = dm_xasprintf("%s/%s/node.json", cache, key), *dir = dm_xasprintf("%s/%s", cache, key);
    struct stat st;
    int r = dm_file_exists(node) ? 1 : stat(dir, &st) == 0 ? -1 : 0; /* -1: a folder without node.json */
    free(node), free(dir);
    return r;
}

/* Entries in CACHE/tmp (each test ends with none). */
static int tmp_entries(const char *cache)
{
    char *cmd = dm_xasprintf("ls -A '%s/tmp' 2>/dev/null | wc -l", cache);
    FILE *p = popen(cmd, "r");
    int n = -1;
    if (p) {
        if (fscanf(p, "%d", &n) != 1)
            n = -1;
        pclose(p);
    }
    free(cmd);
    return n;
}

/* The sum over ranks of v (through allgather_doubles: exact for counts). */
static double sum_ranks(double v)
{
    double *all = dm_xcalloc((size_t)size, sizeof *all), s = 0;
    CHECK(dm_dist_allgather_doubles(&v, 1, all) == 0, "%s", dm_error());
    for (int r = 0; r < size; r++)
        s += all[r];
    free(all);
    return s;
}

#define BIG ((int64_t)(64 << 20) + 4097) /* more than one 64 MiB piece */

static const entry_spec E_BIG = {"a1000000000000000000000000000001", {"sub", "sub/deep"},
                                 {{"out.npy", 1000, 0644}, {"sub/deep/x.bin", 5000, 0600},
                                  {"big.spill", BIG, 0640}, {"empty", 0, 0644}, {"node.json", 120, 0644}}};
static const entry_spec E_LAST = {"a2000000000000000000000000000002", {0},
                                  {{"node.json", 80, 0644}, {"cov.npy", 3000, 0644}}};
static const entry_spec E_ALL = {"a3000000000000000000000000000003", {0}, {{"node.json", 50, 0644}, {"a", 7, 0644}}};
static const entry_spec E_NONE = {"a4000000000000000000000000000004", {0}, {{"node.json", 50, 0644}}};
static const entry_spec E_PART = {"a5000000000000000000000000000005", {0},
                                  {{"node.json", 60, 0644}, {"stats.json", 333, 0644}}};

/* ---- the tests -------------------------------------------------------------- */

static void test_ranks(void)
{
    const char *env = getenv("OMPI_COMM_WORLD_SIZE");
    if (env) {
        CHECK(dm_dist_active() && dm_dist_built(), "launched by mpirun but MPI is not in use");
        CHECK(size == atoi(env), "size %d, mpirun says %s", size, env);
    } else {
        /* a plain start never touches MPI */
        CHECK(!dm_dist_active() && size == 1 && rank == 0, "a plain process: active %d, rank %d of %d",
              dm_dist_active(), rank, size);
    }
    CHECK(rank >= 0 && rank < size, "rank %d of %d", rank, size);
    dm_dist_barrier();
}

static void test_agree(void)
{
    dm_error_clear();
    CHECK(dm_dist_agree(0) == 0, "no rank failed, yet: %s", dm_error());
    CHECK(dm_error_code() == DM_OK, "an error appeared: %s", dm_error());

    /* rank 1 fails (rank 0 with one rank) */
    int bad = size > 1 ? 1 : 0;
    dm_error_clear();
    int rc = rank == bad ? dm_failc(DM_E_IO, "x.spill: write failed: No space left on device") : 0;
    CHECK(dm_dist_agree(rc) == -1, "a failed rank went unnoticed");
    CHECK(dm_error_code() == DM_E_IO && dm_error_exit() == 1, "code %s", dm_errc_name(dm_error_code()));
    if (rank == bad)
        CHECK(!strcmp(dm_error(), "x.spill: write failed: No space left on device"), "own error changed: %s",
              dm_error());
    else
        CHECK(!strcmp(dm_error(), "rank 1: x.spill: write failed: No space left on device"), "got '%s'", dm_error());

    /* ranks 1 and 2 fail: the others hear of rank 1; rank 2 keeps its own */
    dm_error_clear();
    rc = rank == 1 ? dm_failc(DM_E_USAGE, "first") : rank == 2 ? dm_failc(DM_E_CORRUPT, "second") : 0;
    if (size == 1)
        rc = dm_failc(DM_E_USAGE, "first");
    CHECK(dm_dist_agree(rc) == -1, "two failures went unnoticed");
    if (rank == 2)
        CHECK(!strcmp(dm_error(), "second") && dm_error_code() == DM_E_CORRUPT, "rank 2: '%s'", dm_error());
    else if (rank == 1 || size == 1)
        CHECK(!strcmp(dm_error(), "first") && dm_error_exit() == 2, "'%s'", dm_error());
    else
        CHECK(!strcmp(dm_error(), "rank 1: first") && dm_error_exit() == 2, "'%s' (exit %d)", dm_error(),
              dm_error_exit());

    /* interrupted on the last rank: the others exit 130 too */
    dm_error_clear();
    rc = rank == size - 1 ? dm_failc(DM_E_INTERRUPTED, "interrupted by SIGINT") : 0;
    CHECK(dm_dist_agree(rc) == -1 && dm_error_code() == DM_E_INTERRUPTED && dm_error_exit() == 130,
          "'%s' (exit %d)", dm_error(), dm_error_exit());

    /* -1 without a message is a bug, said so */
    dm_error_clear();
    CHECK(dm_dist_agree(rank == 0 ? -1 : 0) == -1 && dm_error_code() == DM_E_INTERNAL &&
              strstr(dm_error(), "without saying why"),
          "'%s'", dm_error());
    dm_error_clear();
}

static void test_bcast(void)
{
    char small[100];
    for (int i = 0; i < 100; i++)
        small[i] = rank == size - 1 ? (char)(i * 7) : 0;
    CHECK(dm_dist_bcast_bytes(small, sizeof small, size - 1) == 0, "%s", dm_error());
    int ok = 1;
    for (int i = 0; i < 100; i++)
        ok &= small[i] == (char)(i * 7);
    CHECK(ok, "bytes from the last rank differ");

    /* more than one 64 MiB piece */
    size_t n = ((size_t)64 << 20) + 3;
    char *big = dm_xcalloc(n, 1), *want = dm_xmalloc(n);
    fill(want, n, "bcast", "big");
    if (rank == 0)
        memcpy(big, want, n);
    CHECK(dm_dist_bcast_bytes(big, n, 0) == 0 && memcmp(big, want, n) == 0, "64 MiB + 3 bytes differ");
    free(big), free(want);

    CHECK(dm_dist_bcast_bytes(small, 1, size) == -1 && dm_error_code() == DM_E_INTERNAL, "a root out of range");

    const char *plan = "{\"nodes\": [\"a\", \"b\"], \"shards\": 100}";
    char *got = (char *)"unset";
    CHECK(dm_dist_bcast_text(rank == 0 ? plan : "not mine", &got) == 0 && got && !strcmp(got, plan), "text '%s'",
          got ? got : "(null)");
    free(got);
    CHECK(dm_dist_bcast_text(rank == 0 ? NULL : "not mine", &got) == 0 && got == NULL, "NULL from rank 0");
    CHECK(dm_dist_bcast_text(rank == 0 ? "" : "x", &got) == 0 && got && !*got, "an empty text");
    free(got);
}

static void test_allgather(void)
{
    double mine[3] = {rank, rank + 0.5, -1e300 * rank}, *all = dm_xcalloc((size_t)size * 3, sizeof *all);
    CHECK(dm_dist_allgather_doubles(mine, 3, all) == 0, "%s", dm_error());
    for (int r = 0; r < size; r++)
        CHECK(all[3 * r] == r && all[3 * r + 1] == r + 0.5 && all[3 * r + 2] == -1e300 * r, "rank %d's values", r);
    /* mine inside all (in place) */
    all[3 * rank] = 100 + rank;
    CHECK(dm_dist_allgather_doubles(all + 3 * rank, 3, all) == 0 && all[0] == 100, "in place");
    CHECK(dm_dist_allgather_doubles(mine, 0, all) == 0, "n = 0");
    free(all);
}

static void test_progress(void)
{
    int64_t u, rows, bytes, want_rows = 0;
    for (int r = 0; r < size; r++)
        want_rows += 10 * (r + 1);
    dm_dist_progress_reset();
    dm_dist_progress_totals(&u, &rows, &bytes);
    CHECK(u == 0 && rows == 0 && bytes == 0, "a new phase starts at %lld %lld %lld", (long long)u,
          (long long)rows, (long long)bytes);
    dm_dist_barrier(); /* else another rank's first post may already count */

    /* live totals: every rank's first post is sent at once, rank 0 sees them arrive */
    dm_dist_progress_post(1, 10 * (rank + 1), 100 * (rank + 1));
    dm_dist_barrier();
    if (rank == 0) {
        double t0 = dm_now();
        do
            dm_dist_progress_totals(&u, &rows, &bytes);
        while (rows != want_rows && dm_now() - t0 < 10);
        CHECK(u == size && rows == want_rows && bytes == 10 * want_rows, "live totals %lld %lld %lld",
              (long long)u, (long long)rows, (long long)bytes);
    } else {
        dm_dist_progress_totals(&u, &rows, &bytes);
        CHECK(u == 1 && rows == 10 * (rank + 1), "a rank's own totals");
    }

    /* many posts, most of them never sent: reset still finds every rank's last */
    for (int i = 1; i <= 2000; i++) {
        dm_dist_progress_post(i, (int64_t)i * (rank + 1), 7);
        if (rank == 0 && i % 100 == 0)
            dm_dist_progress_totals(NULL, NULL, NULL);
    }
    dm_dist_progress_reset();
    dm_dist_progress_final(&u, &rows, &bytes);
    if (rank == 0)
        CHECK(u == 2000 * size && rows == 2000 * want_rows / 10 && bytes == 7 * size, "final %lld %lld %lld",
              (long long)u, (long long)rows, (long long)bytes);
    else
        CHECK(u == 2000 && rows == 2000 * (rank + 1) && bytes == 7, "a rank's own final");
    dm_dist_progress_totals(&u, &rows, &bytes);
    CHECK(u == 0 && rows == 0 && bytes == 0, "after reset: %lld %lld %lld", (long long)u, (long long)rows,
          (long long)bytes);
    dm_dist_barrier();

    /* a second phase counts from zero, and nothing of the first is left in flight */
    dm_dist_progress_post(5, 5, 5);
    dm_dist_progress_reset();
    dm_dist_progress_final(&u, &rows, &bytes);
    CHECK(u == (rank == 0 ? 5 * size : 5), "second phase: %lld", (long long)u);
}

static char *const keys5[] = {"a1000000000000000000000000000001", "a2000000000000000000000000000002",
                              "a3000000000000000000000000000003", "a4000000000000000000000000000004",
                              "a5000000000000000000000000000005"};

/* One cache folder per rank. */
static void test_sync_separate(const char *scratch)
{
    char *cache = dm_xasprintf("%s/sep/r%d", scratch, rank);
    CHECK(dm_mkdir_p(cache) == 0, "%s", dm_error());
    if (rank == 0)
        make_entry(cache, &E_BIG, 1);
    if (rank == size - 1)
        make_entry(cache, &E_LAST, 1);
    make_entry(cache, &E_ALL, 1);
    make_entry(cache, &E_PART, rank > 0 || size == 1);
    if (rank == 0 && size > 1) { /* an incomplete folder, never an entry: replaced */
        char *junk = dm_xasprintf("%s/%s/junk", cache, E_PART.key);
        CHECK(dm_write_file_atomic(junk, "x", 1) == 0, "%s", dm_error());
        free(junk);
    }

    dm_error_clear();
    CHECK(dm_dist_sync_entries(cache, keys5, 5) == 0, "sync: %s", dm_error());
    dm_dist_sync_stats st;
    dm_dist_sync_last(&st);
    if (size > 1) {
        check_entry(cache, &E_BIG);
        check_entry(cache, &E_LAST);
        check_entry(cache, &E_PART);
    }
    check_entry(cache, &E_ALL);
    CHECK(has_entry(cache, E_NONE.key) == 0, "an entry nobody held appeared");
    CHECK(tmp_entries(cache) == 0, "%s/tmp is not empty", cache);
    CHECK(!st.shared, "separate folders taken for one");

    /* E_BIG and E_LAST to size-1 ranks each, E_PART to rank 0 */
    double moved = size > 1 ? 2.0 * (size - 1) + 1 : 0;
    double sent = sum_ranks(st.entries_sent), got = sum_ranks(st.entries_received);
    double bsent = sum_ranks((double)st.bytes_sent), bgot = sum_ranks((double)st.bytes_received);
    double fsent = sum_ranks((double)st.files_sent), fgot = sum_ranks((double)st.files_received);
    CHECK(sent == moved && got == moved, "entries sent %g, received %g, expected %g", sent, got, moved);
    CHECK(bsent == bgot && fsent == fgot, "bytes %g sent, %g received; files %g, %g", bsent, bgot, fsent, fgot);
    if (rank == 0)
        CHECK(st.bytes_sent == (size - 1) * (1000 + 5000 + BIG + 120) && st.files_sent == 5 * (size - 1),
              "rank 0 sent %lld bytes in %lld files", (long long)st.bytes_sent, (long long)st.files_sent);

    /* again: every rank holds everything, nothing moves */
    CHECK(dm_dist_sync_entries(cache, keys5, 5) == 0, "second sync: %s", dm_error());
    dm_dist_sync_last(&st);
    CHECK(sum_ranks(st.entries_sent + st.entries_received) == 0, "a second sync moved entries");
    free(cache);
}

/* One folder for all ranks: nothing is sent. */
static void test_sync_shared(const char *scratch)
{
    char *cache = dm_xasprintf("%s/shared", scratch);
    if (rank == 0) {
        CHECK(dm_mkdir_p(cache) == 0, "%s", dm_error());
        make_entry(cache, &E_LAST, 1);
        make_entry(cache, &E_ALL, 1);
    }
    dm_dist_barrier();
    for (int round = 0; round < 2; round++) { /* the second finds the folders known */
        CHECK(dm_dist_sync_entries(cache, keys5, 5) == 0, "sync: %s", dm_error());
        dm_dist_sync_stats st;
        dm_dist_sync_last(&st);
        CHECK(st.shared == (size > 1), "a shared folder not found shared (round %d)", round);
        CHECK(sum_ranks((double)(st.bytes_sent + st.bytes_received + st.entries_sent + st.entries_received)) == 0,
              "something was sent within one folder");
    }
    check_entry(cache, &E_LAST);
    check_entry(cache, &E_ALL);
    CHECK(tmp_entries(cache) == 0, "%s/tmp is not empty", cache);
    free(cache);
}

/* Ranks 0 and 1 share a folder, every other rank has its own: each folder gets
 * an entry once, however many ranks use it. */
static void test_sync_mixed(const char *scratch)
{
    char *cache = rank < 2 ? dm_xasprintf("%s/mixA", scratch) : dm_xasprintf("%s/mixB%d", scratch, rank);
    if (rank == 0 || rank >= 2)
        CHECK(dm_mkdir_p(cache) == 0, "%s", dm_error());
    if (rank == 0)
        make_entry(cache, &E_LAST, 1);
    if (rank == 2)
        make_entry(cache, &E_ALL, 1);
    dm_dist_barrier();
    CHECK(dm_dist_sync_entries(cache, keys5, 5) == 0, "sync: %s", dm_error());
    dm_dist_sync_stats st;
    dm_dist_sync_last(&st);
    check_entry(cache, &E_LAST);
    if (size > 2)
        check_entry(cache, &E_ALL);
    if (rank == 1)
        CHECK(st.entries_received == 0, "rank 1 received into rank 0's folder");
    /* E_LAST to every rank from 2 on; E_ALL to folder A (rank 0) and to ranks from 3 on */
    double want = size > 2 ? (size - 2) + 1 + (size - 3) : 0;
    CHECK(sum_ranks(st.entries_received) == want, "entries received: expected %g", want);
    CHECK(st.shared == (size == 2), "shared %d", st.shared);
    CHECK(tmp_entries(cache) == 0, "%s/tmp is not empty", cache);
    free(cache);
}

/* Failures: every rank returns -1 with the failing rank's message, and nothing
 * half-written stays. */
static void test_sync_failures(const char *scratch)
{
    static const entry_spec F = {"f1000000000000000000000000000001", {0},
                                 {{"node.json", 60, 0644}, {"data.spill", 3 << 20, 0644}}};
    static const entry_spec G = {"f2000000000000000000000000000002", {0}, {{"node.json", 60, 0644}}};
    static const entry_spec H = {"f3000000000000000000000000000003", {0}, {{"node.json", 60, 0644}}};
    char *const keys[] = {(char *)F.key, (char *)G.key};
    int last = size - 1;

    /* 1. the last rank's disk fills after 1 MiB of the 3 MiB file */
    char *cache = dm_xasprintf("%s/fail1/r%d", scratch, rank);
    CHECK(dm_mkdir_p(cache) == 0, "%s", dm_error());
    if (rank == 0) {
        make_entry(cache, &F, 1);
        make_entry(cache, &G, 1);
    }
    if (rank == last && size > 1)
        setenv("DMICA_FAULT_ENOSPC_AFTER", "1048576", 1);
    dm_error_clear();
    int rc = dm_dist_sync_entries(cache, keys, 2);
    unsetenv("DMICA_FAULT_ENOSPC_AFTER");
    if (size > 1) {
        CHECK(rc == -1 && dm_error_code() == DM_E_IO && strstr(dm_error(), "(injected)"), "rc %d: '%s'", rc,
              dm_error());
        if (rank == last) {
            CHECK(strncmp(dm_error(), "rank ", 5) && strstr(dm_error(), "receiving cache entry"), "'%s'", dm_error());
            CHECK(has_entry(cache, F.key) == 0, "a half-written entry is in place");
        } else {
            char *want = dm_xasprintf("rank %d: receiving cache entry %s from rank 0: ", last, F.key);
            CHECK(!strncmp(dm_error(), want, strlen(want)), "'%s' lacks '%s'", dm_error(), want);
            free(want);
        }
        if (rank != 0)
            CHECK(has_entry(cache, G.key) == 0, "the sync went on after a failure");
    } else {
        CHECK(rc == 0, "one rank: '%s'", dm_error());
    }
    CHECK(tmp_entries(cache) == 0, "%s/tmp is not empty after a failure", cache);
    free(cache);

    /* 2. the sender's entry holds a FIFO: not a file it can send */
    cache = dm_xasprintf("%s/fail2/r%d", scratch, rank);
    CHECK(dm_mkdir_p(cache) == 0, "%s", dm_error());
    if (rank == 0) {
        make_entry(cache, &H, 1);
        char *fifo = dm_xasprintf("%s/%s/pipe", cache, H.key);
        CHECK(mkfifo(fifo, 0644) == 0, "mkfifo %s: %s", fifo, strerror(errno));
        free(fifo);
    }
    char *const hkeys[] = {(char *)H.key};
    dm_error_clear();
    rc = dm_dist_sync_entries(cache, hkeys, 1);
    if (size > 1) {
        CHECK(rc == -1 && strstr(dm_error(), "not a regular file or a folder"), "rc %d: '%s'", rc, dm_error());
        CHECK(rank == 0 ? strncmp(dm_error(), "rank ", 5) != 0 : strncmp(dm_error(), "rank 0: ", 8) == 0, "'%s'",
              dm_error());
        if (rank != 0)
            CHECK(has_entry(cache, H.key) == 0, "an entry without its FIFO arrived");
    }
    CHECK(tmp_entries(cache) == 0, "%s/tmp is not empty after a failure", cache);
    free(cache);

    /* 3. the last rank's cache folder cannot be made (a file is in the way; as
     * root, permissions would not stop it) */
    char *base = dm_xasprintf("%s/fail3", scratch);
    cache = dm_xasprintf("%s/r%d", base, rank);
    CHECK(dm_mkdir_p(base) == 0, "%s", dm_error());
    if (rank == last && size > 1)
        CHECK(dm_write_file_atomic(cache, "in the way", 10) == 0, "%s", dm_error());
    else
        CHECK(dm_mkdir_p(cache) == 0, "%s", dm_error());
    if (rank == 0)
        make_entry(cache, &G, 1);
    dm_error_clear();
    rc = dm_dist_sync_entries(cache, keys + 1, 1);
    if (size > 1) {
        CHECK(rc == -1 && dm_error_code() == DM_E_IO && strstr(dm_error(), "Not a directory"), "rc %d: '%s'", rc,
              dm_error());
        if (rank != last) {
            char *want = dm_xasprintf("rank %d: cache folder: ", last);
            CHECK(!strncmp(dm_error(), want, strlen(want)), "'%s' lacks '%s'", dm_error(), want);
            free(want);
        }
    }
    free(cache), free(base);

    /* 4. different keys on different ranks: a bug of the caller, said so */
    char *k1[] = {(char *)F.key}, *k2[] = {(char *)G.key};
    cache = dm_xasprintf("%s/fail4/r%d", scratch, rank);
    CHECK(dm_mkdir_p(cache) == 0, "%s", dm_error());
    dm_error_clear();
    rc = dm_dist_sync_entries(cache, rank == last ? k2 : k1, 1);
    if (size > 1)
        CHECK(rc == -1 && dm_error_code() == DM_E_INTERNAL && strstr(dm_error(), "same keys"), "rc %d: '%s'", rc,
              dm_error());
    free(cache);
    dm_error_clear();
}

int main(int argc, char **argv)
{
    if (dm_dist_init(&argc, &argv)) {
        fprintf(stderr, "test_dist: %s\n", dm_error());
        return 1;
    }
    rank = dm_dist_rank();
    size = dm_dist_size();
    dm_fs_set_durable(0); /* fsyncs cost time and prove nothing here */

    /* one scratch folder for all ranks (they share this machine) */
    char *scratch = NULL;
    if (rank == 0) {
        const char *base = getenv("TMPDIR");
        scratch = dm_xasprintf("%s/dmica-test-dist-XXXXXX", base && *base ? base : "/tmp");
        if (!mkdtemp(scratch)) {
            perror("mkdtemp");
            free(scratch);
            scratch = NULL;
        }
    }
    char *shared = NULL;
    if (dm_dist_bcast_text(scratch, &shared) || !shared) {
        fprintf(stderr, "rank %d: no scratch folder\n", rank);
        dm_dist_finalize();
        return 1;
    }

    test_ranks();
    test_agree();
    test_bcast();
    test_allgather();
    test_progress();
    test_sync_separate(shared);
    test_sync_shared(shared);
    test_sync_mixed(shared);
    test_sync_failures(shared);

    double total = sum_ranks(failures);
    dm_dist_barrier();
    if (rank == 0) {
        dm_rm_rf(shared);
        printf("test_dist: %d rank%s%s: %s\n", size, size == 1 ? "" : "s", dm_dist_active() ? " (MPI)" : "",
               total == 0 ? "all checks passed" : "FAILED");
    }
    free(scratch), free(shared);
    dm_dist_finalize();
    return total == 0 ? 0 : 1;
}
