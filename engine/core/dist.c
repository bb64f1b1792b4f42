/*
 * dist.c: the processes of one run (MPI ranks), and what they exchange.
 *
 * One binary serves every case. Built without MPI (no DM_MPI), the transport
 * below is a stub for one rank; built with it, MPI is initialised only when a
 * launcher started the process (dm_dist_init), so `dmica demo` started from a
 * shell never loads a network stack. Either way the callers write one code
 * path: with one rank every collective returns at once.
 *
 * The design keeps ranks in step rather than fast:
 *
 *   - Every exchange is decided from data every rank has (the keys, the
 *     gathered holdings, the folder groups), so every rank walks the same plan
 *     and knows which point-to-point messages it takes part in. Nothing waits
 *     on a message that no plan sends.
 *   - A rank that fails goes on taking part: a sender that cannot read a file
 *     sends a FAIL piece instead of the bytes, a receiver whose disk is full
 *     keeps receiving and drops the bytes, and an agreement after each key
 *     (dm_dist_agree: the lowest failing rank's message to all) stops every
 *     rank together.
 *   - Two communicators: `comm` for collectives and entry transfers, `pcomm`
 *     for progress messages, so draining progress (MPI_Iprobe on any source)
 *     never takes a message meant for a transfer.
 *
 * Cache entries travel as a manifest (text lines "d MODE PATH" and
 * "f MODE SIZE PATH", folders before their contents, node.json last) and then
 * each file as DATA pieces of at most 64 MiB closed by an END piece that
 * carries the file's XXH3-64. Every message is one buffer: a 32-byte header
 * (kind, length, sum, aux) and the payload. 64 MiB keeps MPI's int counts far
 * from their limit and a rank's buffers at 2 x 64 MiB whatever the entry's size.
 */
#include "dist.h"
#include "engine.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "fs.h"

#if DM_MPI
#include <mpi.h>
#endif

/* The largest payload of one message of an entry transfer. */
#define PIECE ((size_t)64 << 20)
/* Progress posts from one rank: at most one message per this many seconds. */
#define POST_INTERVAL 0.05

enum { TAG_SYNC = 1, TAG_POST = 2, TAG_END = 3 };

static struct {
    int active; /* MPI_Init was called and MPI_Finalize not yet */
    int rank, size;
#if DM_MPI
    MPI_Comm comm;  /* collectives and entry transfers */
    MPI_Comm pcomm; /* progress messages only */
#endif
} D = {0, 0, 1};

int dm_dist_rank(void) { return D.rank; }
int dm_dist_size(void) { return D.size; }
int dm_dist_active(void) { return D.active; }
int dm_dist_built(void)
{
#if DM_MPI
    return 1;
#else
    return 0;
#endif
}

/* ---- the transport --------------------------------------------------------
 * A few calls over MPI, or their one-rank stubs. Each returns 0, or -1 with a
 * DM_E_IO error naming the MPI call. */

#if DM_MPI
static int mpi_fail(int err, const char *what)
{
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(err, msg, &len) != MPI_SUCCESS)
        snprintf(msg, sizeof msg, "MPI error %d", err);
    return dm_failc(DM_E_IO, "%s failed on rank %d: %s", what, D.rank, msg);
}
#define MPI_CHECK(call, what) ((err = (call)) == MPI_SUCCESS ? 0 : mpi_fail(err, what))
#endif

static int t_allreduce_min(int mine, int *out)
{
#if DM_MPI
    int err;
    if (D.active)
        return MPI_CHECK(MPI_Allreduce(&mine, out, 1, MPI_INT, MPI_MIN, D.comm), "MPI_Allreduce");
#endif
    *out = mine;
    return 0;
}

/* Every rank's n bytes `mine` into all (size x n, rank order). */
static int t_allgather(const void *mine, void *all, size_t n)
{
#if DM_MPI
    int err;
    if (D.active) {
        if (n > INT_MAX)
            return dm_failc(DM_E_INTERNAL, "MPI_Allgather of %zu bytes per rank: more than an int counts", n);
        return MPI_CHECK(MPI_Allgather(mine, (int)n, MPI_BYTE, all, (int)n, MPI_BYTE, D.comm), "MPI_Allgather");
    }
#endif
    memmove(all, mine, n);
    return 0;
}

static int t_bcast(void *buf, size_t n, int root)
{
#if DM_MPI
    int err;
    if (D.active)
        for (size_t off = 0; off < n;) {
            size_t k = n - off < PIECE ? n - off : PIECE;
            if (MPI_CHECK(MPI_Bcast((char *)buf + off, (int)k, MPI_BYTE, root, D.comm), "MPI_Bcast"))
                return -1;
            off += k;
        }
#endif
    return 0;
}

static int t_send(const void *buf, size_t n, int to)
{
#if DM_MPI
    int err;
    if (D.active)
        return MPI_CHECK(MPI_Send(buf, (int)n, MPI_BYTE, to, TAG_SYNC, D.comm), "MPI_Send");
#endif
    return dm_failc(DM_E_INTERNAL, "a message to rank %d without MPI", to);
}

/* A message of at most max bytes from rank `from`; *got gets its size. */
static int t_recv(void *buf, size_t max, int from, size_t *got)
{
#if DM_MPI
    int err, count = 0;
    MPI_Status st;
    if (D.active) {
        if (MPI_CHECK(MPI_Recv(buf, (int)max, MPI_BYTE, from, TAG_SYNC, D.comm, &st), "MPI_Recv") ||
            MPI_CHECK(MPI_Get_count(&st, MPI_BYTE, &count), "MPI_Get_count"))
            return -1;
        *got = (size_t)count;
        return 0;
    }
#endif
    *got = 0;
    return dm_failc(DM_E_INTERNAL, "a message from rank %d without MPI", from);
}

/* ---- starting and stopping ------------------------------------------------ */

/* The variable's value as a number, or -1 when it is unset or not a number. */
static long env_long(const char *name)
{
    const char *s = getenv(name);
    char *end;
    if (!s || !*s)
        return -1;
    long v = strtol(s, &end, 10);
    return *end || v < 0 ? -1 : v;
}

/* The variable by which a launcher that can join processes announced itself,
 * or NULL. */
static const char *launcher_var(void)
{
    static const char *vars[] = {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
        const char *v = getenv(vars[i]);
        if (v && *v)
            return vars[i];
    }
    return NULL;
}

/* How many processes the launcher says it started (0: it does not say). */
static long launched_size(void)
{
    long n = env_long("OMPI_COMM_WORLD_SIZE");
    if (n < 0)
        n = env_long("PMI_SIZE");
    if (n < 0 && env_long("PMIX_RANK") > 0) /* PMIx does not say the size: a rank above 0 says enough */
        n = env_long("PMIX_RANK") + 1;
    if (n < 0)
        n = env_long("SLURM_STEP_NUM_TASKS");
    return n < 0 ? 0 : n;
}

#if DM_MPI
static void progress_init(void);
#endif
static void progress_free(void);

int dm_dist_init(int *argc, char ***argv)
{
    if (D.active)
        return 0;
    const char *var = launcher_var();
    long n = launched_size();
#if DM_MPI
    if (!var) {
        /* srun without --mpi=pmix (or pmi2): N copies that cannot find each other */
        if (n > 1)
            return dm_failc(DM_E_USAGE, "started by srun as one of %ld tasks, but without PMI, so the tasks "
                            "cannot join one run: start it with srun --mpi=pmix (or --mpi=pmi2)", n);
        return 0;
    }
    int provided = 0, err, initialized = 0;
    MPI_Initialized(&initialized);
    if (!initialized && MPI_CHECK(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread"))
        return -1;
    if (MPI_CHECK(MPI_Comm_dup(MPI_COMM_WORLD, &D.comm), "MPI_Comm_dup") ||
        MPI_CHECK(MPI_Comm_dup(MPI_COMM_WORLD, &D.pcomm), "MPI_Comm_dup"))
        return -1;
    /* errors come back as return codes: the callers turn them into messages */
    MPI_Comm_set_errhandler(D.comm, MPI_ERRORS_RETURN);
    MPI_Comm_set_errhandler(D.pcomm, MPI_ERRORS_RETURN);
    MPI_Comm_rank(D.comm, &D.rank);
    MPI_Comm_size(D.comm, &D.size);
    D.active = 1;
    progress_init();
    return 0;
#else
    (void)argc, (void)argv;
    if (n > 1 || (var && env_long("PMIX_RANK") > 0))
        return dm_failc(DM_E_USAGE, "started by %s as one of %ld processes, but this dmica was built without MPI, "
                        "so each would run the whole pipeline alone: rebuild it with Open MPI (apt-get install "
                        "libopenmpi-dev, then make) or run it without a launcher",
                        var ? (strncmp(var, "OMPI", 4) ? "a launcher" : "mpirun") : "srun", n);
    return 0;
#endif
}

static void memo_free(void);

void dm_dist_finalize(void)
{
#if DM_MPI
    if (D.active) {
        dm_dist_progress_reset();
        MPI_Comm_free(&D.comm);
        MPI_Comm_free(&D.pcomm);
        MPI_Finalize();
    }
#endif
    D.active = 0;
    D.rank = 0;
    D.size = 1;
    progress_free();
    memo_free();
}

void dm_dist_barrier(void)
{
#if DM_MPI
    int err;
    if (D.active && MPI_CHECK(MPI_Barrier(D.comm), "MPI_Barrier"))
        dm_warn("%s", dm_error());
#endif
}

/* ---- errors --------------------------------------------------------------- */

int dm_dist_agree(int rc)
{
    int failed = rc != 0, lowest;
    if (failed && dm_error_code() == DM_OK)
        dm_failc(DM_E_INTERNAL, "rank %d failed without saying why (a bug in dmica)", D.rank);
    if (D.size == 1)
        return failed ? -1 : 0;
    if (t_allreduce_min(failed ? D.rank : D.size, &lowest))
        return -1;
    if (lowest == D.size)
        return 0;
    /* the lowest failing rank's code and message, to every rank */
    int64_t head[2] = {0, 0};
    char *msg = NULL;
    if (D.rank == lowest) {
        msg = dm_xstrdup(dm_error());
        head[0] = dm_error_code();
        head[1] = (int64_t)strlen(msg);
    }
    if (t_bcast(head, sizeof head, lowest)) {
        free(msg);
        return -1;
    }
    if (D.rank != lowest)
        msg = dm_xcalloc(1, (size_t)head[1] + 1);
    if (t_bcast(msg, (size_t)head[1], lowest)) {
        free(msg);
        return -1;
    }
    if (!failed)
        dm_failc((dm_errc)head[0], "rank %d: %s", lowest, msg);
    free(msg);
    return -1;
}

/* ---- broadcasts and gathers ------------------------------------------------ */

int dm_dist_bcast_bytes(void *buf, size_t n, int root)
{
    if (root < 0 || root >= D.size)
        return dm_failc(DM_E_INTERNAL, "broadcast from rank %d of %d", root, D.size);
    return t_bcast(buf, n, root);
}

int dm_dist_bcast_text(const char *text, char **out)
{
    *out = NULL;
    int64_t len = D.rank == 0 ? (text ? (int64_t)strlen(text) : -1) : 0;
    if (t_bcast(&len, sizeof len, 0))
        return -1;
    if (len < 0)
        return 0;
    char *s = dm_xmalloc((size_t)len + 1);
    if (D.rank == 0)
        memcpy(s, text, (size_t)len);
    if (t_bcast(s, (size_t)len, 0)) {
        free(s);
        return -1;
    }
    s[len] = 0;
    *out = s;
    return 0;
}

int dm_dist_allgather_doubles(const double *mine, int n, double *all)
{
    if (n < 0)
        return dm_failc(DM_E_INTERNAL, "allgather of %d doubles", n);
    if (D.size == 1) {
        memmove(all, mine, (size_t)n * sizeof *all);
        return 0;
    }
    /* MPI forbids overlapping send and receive buffers: send a copy */
    double *copy = dm_xmalloc((size_t)n * sizeof *copy + 1);
    memcpy(copy, mine, (size_t)n * sizeof *copy);
    int rc = t_allgather(copy, all, (size_t)n * sizeof *all);
    free(copy);
    return rc;
}

/* ---- which ranks share a cache folder -------------------------------------
 * Each rank creates CACHE/tmp/<token>.<pid>.<start>.probe (a name the sweep of
 * dead runs' folders recognises) with a random 128-bit token, the names are
 * gathered, and each rank looks for every other rank's file. Rank r's group is
 * the lowest rank whose file it sees (itself if none lower): ranks of one group
 * share a folder. The answer is kept per combination of folders (a hash of
 * every rank's real path), so each combination is probed once per process. */

typedef struct {
    uint64_t id;
    int *group;
} folder_memo;
static folder_memo *memos;
static int nmemos;

static void memo_free(void)
{
    for (int i = 0; i < nmemos; i++)
        free(memos[i].group);
    free(memos);
    memos = NULL;
    nmemos = 0;
}

static void random_hex(char out[33])
{
    unsigned char b[16];
    if (getrandom(b, sizeof b, 0) != (ssize_t)sizeof b) {
        /* no getrandom: time, pid and rank are unique enough among the ranks */
        struct { double t; long pid; int rank; } seed = {dm_now(), (long)getpid(), D.rank};
        XXH128_hash_t h = XXH3_128bits(&seed, sizeof seed);
        memcpy(b, &h.low64, 8), memcpy(b + 8, &h.high64, 8);
    }
    for (int i = 0; i < 16; i++)
        snprintf(out + 2 * i, 3, "%02x", b[i]);
}

#define PROBE_NAME 128

static int cache_groups(const char *cache, int *group)
{
    int size = D.size, rc = 0;
    char *tmp = dm_xasprintf("%s/tmp", cache), *mine = NULL;
    char *real = NULL, *names = NULL;
    uint64_t h = 0, *hs = dm_xcalloc((size_t)size, sizeof *hs);
    if (dm_mkdir_p(tmp))
        rc = dm_fail_prefix("cache folder");
    else if (!(real = realpath(cache, NULL)))
        rc = dm_failc(DM_E_IO, "%s: %s", cache, strerror(errno));
    else
        h = XXH3_64bits(real, strlen(real));
    if (dm_dist_agree(rc) || t_allgather(&h, hs, sizeof h)) {
        rc = -1;
        goto end;
    }
    uint64_t id = XXH3_64bits(hs, (size_t)size * sizeof *hs);
    for (int i = 0; i < nmemos; i++)
        if (memos[i].id == id) {
            memcpy(group, memos[i].group, (size_t)size * sizeof *group);
            goto end;
        }

    char token[33], name[PROBE_NAME] = {0};
    random_hex(token);
    mine = dm_cache_tmp_path(cache, token, "probe");
    snprintf(name, sizeof name, "%s", mine + strlen(cache) + 1); /* "tmp/<token>...", relative to cache */
    int fd = open(mine, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644), g = D.rank;
    if (fd < 0)
        rc = dm_failc(DM_E_IO, "%s: cannot create: %s", mine, strerror(errno));
    else
        close(fd);
    if (dm_dist_agree(rc)) {
        rc = -1;
        if (fd >= 0)
            goto unlink;
        goto end;
    }
    /* every file exists once the gather is done: each rank made its own first */
    names = dm_xcalloc((size_t)size, PROBE_NAME);
    if (t_allgather(name, names, PROBE_NAME)) {
        rc = -1;
        goto unlink;
    }
    for (int s = 0; s < D.rank; s++) {
        char *path = dm_xasprintf("%s/%.*s", cache, PROBE_NAME, names + (size_t)s * PROBE_NAME);
        struct stat st;
        int seen = stat(path, &st) == 0;
        free(path);
        if (seen) {
            g = s;
            break;
        }
    }
    /* after this gather every rank has looked: the files may go */
    rc = t_allgather(&g, group, sizeof g);
unlink:
    if (unlink(mine) < 0)
        dm_warn("%s: cannot remove: %s", mine, strerror(errno));
    if (!rc) {
        memos = dm_xrealloc(memos, (size_t)(nmemos + 1) * sizeof *memos);
        memos[nmemos].id = id;
        memos[nmemos].group = dm_xmalloc((size_t)size * sizeof *group);
        memcpy(memos[nmemos++].group, group, (size_t)size * sizeof *group);
    }
end:
    free(tmp), free(mine), free(real), free(names), free(hs);
    return rc;
}

/* ---- sending and receiving an entry --------------------------------------- */

static XXH3_state_t *xxh3_new(void)
{
    XXH3_state_t *x = XXH3_createState();
    if (!x)
        dm_oom(576, "a checksum state"); /* the size of XXH3_state_t, opaque here */
    return x;
}

enum { K_MANIFEST = 1, K_DATA, K_END, K_FAIL };
typedef struct {
    int64_t kind; /* K_* */
    int64_t len;  /* payload bytes after the header */
    uint64_t sum; /* K_END: XXH3-64 of the file */
    int64_t aux;  /* K_MANIFEST: the number of files */
} piece_head;

typedef struct {
    char *buf; /* a header and PIECE bytes */
    dm_dist_sync_stats st;
} sync_state;

static dm_dist_sync_stats last_stats;

void dm_dist_sync_last(dm_dist_sync_stats *out) { *out = last_stats; }

static int send_head(sync_state *s, int to, int64_t kind, int64_t len, uint64_t sum, int64_t aux)
{
    piece_head h = {kind, len, sum, aux};
    memcpy(s->buf, &h, sizeof h);
    return t_send(s->buf, sizeof h + (size_t)len, to);
}

typedef struct {
    char *path; /* relative to the entry */
    int64_t size;
    unsigned mode;
} file_item;
typedef struct {
    file_item *f;
    int n, cap;
} file_list;

static void files_add(file_list *l, const char *rel, const struct stat *st)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 16;
        l->f = dm_xrealloc(l->f, (size_t)l->cap * sizeof *l->f);
    }
    l->f[l->n++] = (file_item){dm_xstrdup(rel), (int64_t)st->st_size, (unsigned)(st->st_mode & 07777)};
}

static void files_free(file_list *l)
{
    for (int i = 0; i < l->n; i++)
        free(l->f[i].path);
    free(l->f);
}

/* Appends the folder root/rel's contents to the manifest: "d MODE PATH" for a
 * folder (before what it holds), and the files to `files` (the caller writes
 * their lines, node.json last). */
static int list_entry(const char *root, const char *rel, dm_strbuf *dirs, file_list *files)
{
    char *dir = *rel ? dm_xasprintf("%s/%s", root, rel) : dm_xstrdup(root);
    struct dirent **ents;
    int n = scandir(dir, &ents, NULL, alphasort), rc = 0;
    if (n < 0) {
        rc = dm_failc(DM_E_IO, "%s: cannot list folder: %s", dir, strerror(errno));
        free(dir);
        return rc;
    }
    for (int i = 0; i < n; i++) {
        const char *name = ents[i]->d_name;
        if (!rc && strcmp(name, ".") && strcmp(name, "..")) {
            char *sub = *rel ? dm_xasprintf("%s/%s", rel, name) : dm_xstrdup(name);
            char *path = dm_xasprintf("%s/%s", root, sub);
            struct stat st;
            if (strchr(name, '\n'))
                rc = dm_failc(DM_E_IO, "%s: a file name with a line break cannot be sent", path);
            else if (lstat(path, &st) < 0)
                rc = dm_failc(DM_E_IO, "%s: %s", path, strerror(errno));
            else if (S_ISDIR(st.st_mode)) {
                dm_strbuf_addf(dirs, "d %o %s\n", (unsigned)(st.st_mode & 07777), sub);
                rc = list_entry(root, sub, dirs, files);
            } else if (S_ISREG(st.st_mode))
                files_add(files, sub, &st);
            else
                rc = dm_failc(DM_E_IO, "%s: not a regular file or a folder: a cache entry holds only those", path);
            free(sub), free(path);
        }
        free(ents[i]);
    }
    free(ents);
    free(dir);
    return rc;
}

/* The manifest of entry folder dir: folders, then files with node.json last. */
static int entry_manifest(const char *dir, dm_strbuf *man, int *nfiles)
{
    file_list files = {0};
    int rc = list_entry(dir, "", man, &files);
    for (int pass = 0; !rc && pass < 2; pass++)
        for (int i = 0; i < files.n; i++) {
            const file_item *f = &files.f[i];
            if ((strcmp(f->path, "node.json") == 0) == pass)
                dm_strbuf_addf(man, "f %o %lld %s\n", f->mode, (long long)f->size, f->path);
        }
    *nfiles = files.n;
    files_free(&files);
    if (!rc && man->len > PIECE)
        rc = dm_failc(DM_E_IO, "%s: too many files to send (a manifest of %zu bytes)", dir, man->len);
    return rc;
}

/* Sends one file as DATA pieces and an END with its XXH3-64; on a read error
 * sends FAIL (the receiver drops the entry) and returns -1. */
static int send_file(sync_state *s, const char *path, int64_t size, int to)
{
    char *data = s->buf + sizeof(piece_head);
    int fd = open(path, O_RDONLY | O_CLOEXEC), rc = 0;
    if (fd < 0)
        rc = dm_failc(DM_E_IO, "%s: cannot open: %s", path, strerror(errno));
    XXH3_state_t *x = xxh3_new();
    XXH3_64bits_reset(x);
    for (int64_t off = 0; !rc && off < size;) {
        size_t n = (size_t)(size - off) < PIECE ? (size_t)(size - off) : PIECE;
        if (dm_pread_all(fd, data, n, off, path)) {
            rc = -1;
            break;
        }
        XXH3_64bits_update(x, data, n);
        if (send_head(s, to, K_DATA, (int64_t)n, 0, 0)) {
            XXH3_freeState(x);
            if (fd >= 0)
                close(fd);
            return -1; /* MPI itself failed: nothing more can be said to `to` */
        }
        off += (int64_t)n;
        s->st.bytes_sent += (int64_t)n;
    }
    uint64_t sum = XXH3_64bits_digest(x);
    XXH3_freeState(x);
    if (fd >= 0)
        close(fd);
    if (rc) {
        dm_fail_prefix("sending cache entry file to rank %d", to);
        send_head(s, to, K_FAIL, 0, 0, 0);
        return -1;
    }
    s->st.files_sent++;
    return send_head(s, to, K_END, 0, sum, 0);
}

/* Sends entry CACHE/key to rank `to`; with failed set (this rank already
 * failed on this key) only says so. */
static int send_entry(sync_state *s, const char *cache, const char *key, int to, int failed)
{
    char *dir = dm_xasprintf("%s/%s", cache, key);
    dm_strbuf man = DM_STRBUF_INIT;
    int nfiles = 0, rc = failed ? -1 : entry_manifest(dir, &man, &nfiles);
    if (rc) {
        send_head(s, to, K_FAIL, 0, 0, 0);
        goto end;
    }
    memcpy(s->buf + sizeof(piece_head), man.s, man.len);
    if ((rc = send_head(s, to, K_MANIFEST, (int64_t)man.len, 0, nfiles)))
        goto end;
    /* the files, in the manifest's order */
    for (char *line = man.s; !rc && line && *line;) {
        char *nl = strchr(line, '\n');
        *nl = 0;
        if (line[0] == 'f') {
            unsigned mode;
            long long size;
            int at = 0;
            sscanf(line, "f %o %lld %n", &mode, &size, &at);
            char *path = dm_xasprintf("%s/%s", dir, line + at);
            rc = send_file(s, path, size, to);
            free(path);
        }
        line = nl + 1;
    }
    if (!rc)
        s->st.entries_sent++;
end:
    free(man.s);
    free(dir);
    return rc;
}

/* A manifest path is relative, has no empty, "." or ".." part. */
static int safe_relpath(const char *p)
{
    if (!*p || *p == '/')
        return 0;
    for (const char *c = p; *c;) {
        const char *e = strchr(c, '/');
        size_t n = e ? (size_t)(e - c) : strlen(c);
        if (n == 0 || (n == 1 && c[0] == '.') || (n == 2 && c[0] == '.' && c[1] == '.'))
            return 0;
        c += n + (e ? 1 : 0);
        if (e && !*c)
            return 0;
    }
    return 1;
}

/* The name of an entry's temporary folder: the key when it is a 32-character
 * name without a dot (the engine's keys), which the sweep of dead runs'
 * folders recognises, else an XXH3-128 of it. */
static void tmp_name_of(const char *key, char out[33])
{
    if (strlen(key) == 32 && !strchr(key, '.')) {
        memcpy(out, key, 33);
        return;
    }
    XXH128_hash_t h = XXH3_128bits(key, strlen(key));
    snprintf(out, 33, "%016llx%016llx", (unsigned long long)h.high64, (unsigned long long)h.low64);
}

/* Puts the finished folder tmp in place as final. An entry that another rank
 * of this folder placed meanwhile is kept (entries of one key are alike). */
static int place_entry(const char *cache, const char *tmp, const char *final)
{
    if (rename(tmp, final) == 0)
        return dm_fsync_path(cache);
    if (errno != EEXIST && errno != ENOTEMPTY)
        return dm_failc(DM_E_IO, "%s: cannot rename to %s: %s", tmp, final, strerror(errno));
    char *node = dm_xasprintf("%s/node.json", final);
    int complete = dm_file_exists(node);
    free(node);
    if (complete)
        return dm_rm_rf(tmp);
    return dm_dir_publish(tmp, final); /* a folder without node.json: never an entry */
}

/* The next message from rank `from`: its header in *h, its payload (at
 * s->buf + sizeof *h) *n bytes. */
static int recv_piece(sync_state *s, int from, piece_head *h, size_t *n)
{
    size_t got;
    if (t_recv(s->buf, sizeof *h + PIECE, from, &got))
        return -1;
    if (got < sizeof *h)
        return dm_failc(DM_E_INTERNAL, "a message of %zu bytes from rank %d, shorter than its header", got, from);
    memcpy(h, s->buf, sizeof *h);
    *n = got - sizeof *h;
    return 0;
}

/* Receives entry `key` from rank `from` into CACHE/tmp, then into place. On a
 * local error it keeps receiving (and drops) the rest of the entry, so the
 * sender is never left waiting, and removes what it wrote. */
static int recv_entry(sync_state *s, const char *cache, const char *key, int from)
{
    piece_head h = {0};
    size_t n = 0;
    char *data = s->buf + sizeof h;
    if (recv_piece(s, from, &h, &n))
        return -1;
    if (h.kind == K_FAIL)
        return 0; /* the sender failed: its error comes with the agreement */
    if (h.kind != K_MANIFEST)
        return dm_failc(DM_E_INTERNAL, "cache entry %s from rank %d: a message of kind %lld where a manifest "
                        "belongs", key, from, (long long)h.kind);
    char *man = dm_xmalloc(n + 1);
    memcpy(man, data, n);
    man[n] = 0;

    char tname[33];
    tmp_name_of(key, tname);
    char *tmp = dm_cache_tmp_path(cache, tname, "sync"), *final = dm_xasprintf("%s/%s", cache, key);
    int rc = 0, aborted = 0, ndirs = 0;
    char **dirs = NULL;
    unsigned *dir_modes = NULL;
    int64_t files = 0, bytes = 0;
    if (mkdir(tmp, 0700) < 0)
        rc = dm_failc(DM_E_IO, "%s: cannot create folder: %s", tmp, strerror(errno));
    XXH3_state_t *x = xxh3_new();
    for (char *line = man; !aborted && *line;) {
        char *nl = strchr(line, '\n');
        if (!nl)
            break;
        *nl = 0;
        unsigned mode = 0;
        long long size = 0;
        int at = 0;
        char type = line[0];
        if (type == 'd')
            sscanf(line, "d %o %n", &mode, &at);
        else if (type == 'f')
            sscanf(line, "f %o %lld %n", &mode, &size, &at);
        const char *rel = line + at;
        if (!at || !safe_relpath(rel) || size < 0) {
            /* cannot happen between two dmica ranks; refuse rather than write outside tmp */
            if (!rc)
                rc = dm_failc(DM_E_INTERNAL, "cache entry %s from rank %d: bad manifest line '%s'", key, from, line);
            if (type != 'f')
                goto next;
        }
        char *path = dm_xasprintf("%s/%s", tmp, rel);
        if (type == 'd') {
            if (!rc && mkdir(path, 0700) < 0)
                rc = dm_failc(DM_E_IO, "%s: cannot create folder: %s", path, strerror(errno));
            dirs = dm_xrealloc(dirs, (size_t)(ndirs + 1) * sizeof *dirs);
            dir_modes = dm_xrealloc(dir_modes, (size_t)(ndirs + 1) * sizeof *dir_modes);
            dirs[ndirs] = path;
            dir_modes[ndirs++] = mode;
            goto next;
        }
        /* a file: DATA pieces, then END (or FAIL) */
        int fd = -1;
        if (!rc && (fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600)) < 0)
            rc = dm_failc(DM_E_IO, "%s: cannot create: %s", path, strerror(errno));
        XXH3_64bits_reset(x);
        int64_t written = 0;
        for (;;) {
            if (recv_piece(s, from, &h, &n)) {
                /* MPI failed: the stream is lost, stop here */
                if (fd >= 0)
                    close(fd);
                free(path);
                rc = -1;
                aborted = 1;
                goto next;
            }
            if (h.kind == K_DATA) {
                if (!rc && dm_write_all(fd, data, n, path))
                    rc = -1;
                if (!rc)
                    XXH3_64bits_update(x, data, n);
                written += (int64_t)n;
                continue;
            }
            if (h.kind == K_FAIL)
                aborted = 1;
            else if (!rc && written != size)
                rc = dm_failc(DM_E_CORRUPT, "%s: received %lld bytes of %lld from rank %d", path,
                              (long long)written, size, from);
            else if (!rc && XXH3_64bits_digest(x) != h.sum)
                rc = dm_failc(DM_E_CORRUPT, "%s: the bytes received from rank %d do not match its checksum", path,
                              from);
            break;
        }
        if (fd >= 0) {
            if (!rc && !aborted && fchmod(fd, mode & 07777) < 0)
                rc = dm_failc(DM_E_IO, "%s: cannot set its mode: %s", path, strerror(errno));
            if (!rc && !aborted && dm_fs_durable() && fsync(fd) < 0)
                rc = dm_failc(DM_E_IO, "%s: fsync failed: %s", path, strerror(errno));
            if (close(fd) < 0 && !rc && !aborted)
                rc = dm_failc(DM_E_IO, "%s: close failed: %s", path, strerror(errno));
        }
        files++;
        bytes += written;
        free(path);
    next:
        line = nl + 1;
    }
    XXH3_freeState(x);
    /* folders' own modes last (a read-only one takes no files), deepest first */
    for (int i = ndirs - 1; i >= 0; i--) {
        if (!rc && !aborted && dm_fsync_path(dirs[i]))
            rc = -1;
        if (!rc && !aborted && chmod(dirs[i], dir_modes[i] & 07777) < 0)
            rc = dm_failc(DM_E_IO, "%s: cannot set its mode: %s", dirs[i], strerror(errno));
        free(dirs[i]);
    }
    free(dirs), free(dir_modes);
    if (!rc && !aborted && !dm_fsync_path(tmp) && !place_entry(cache, tmp, final)) {
        s->st.entries_received++;
        s->st.files_received += files;
        s->st.bytes_received += bytes;
    } else {
        if (!rc && !aborted)
            rc = -1; /* the sync or the rename failed */
        if (rc)
            dm_fail_prefix("receiving cache entry %s from rank %d", key, from);
        int keep = dm_error_code();
        char *msg = rc ? dm_xstrdup(dm_error()) : NULL;
        if (dm_rm_rf(tmp))
            dm_warn("%s", dm_error());
        if (msg) /* the removal's message must not replace the reason */
            dm_failc((dm_errc)keep, "%s", msg);
        free(msg);
    }
    free(man), free(tmp), free(final);
    return rc;
}

/* ---- dm_dist_sync_entries ------------------------------------------------- */

static int key_ok(const char *key)
{
    return *key && strlen(key) < 256 && !strchr(key, '/') && strcmp(key, ".") && strcmp(key, "..") &&
           strcmp(key, "tmp") && !strchr(key, '\n');
}

int dm_dist_sync_entries(const char *cache, char *const *keys, int nkeys)
{
    memset(&last_stats, 0, sizeof last_stats);
    if (D.size == 1)
        return 0; /* one rank, one folder: nothing to exchange */
    int size = D.size, rc = 0;
    /* the same keys on every rank, or the plan below differs between ranks */
    XXH3_state_t *x = xxh3_new();
    XXH3_64bits_reset(x);
    XXH3_64bits_update(x, &nkeys, sizeof nkeys);
    for (int k = 0; k < nkeys; k++) {
        XXH3_64bits_update(x, keys[k], strlen(keys[k]) + 1);
        if (!rc && !key_ok(keys[k]))
            rc = dm_failc(DM_E_INTERNAL, "cache key '%s' is not a folder name", keys[k]);
    }
    uint64_t mine = XXH3_64bits_digest(x), root = mine;
    XXH3_freeState(x);
    if (t_bcast(&root, sizeof root, 0))
        return -1;
    if (!rc && root != mine)
        rc = dm_failc(DM_E_INTERNAL, "rank %d was asked to sync other cache keys than rank 0 (%d keys): every "
                      "rank must pass the same keys in the same order", D.rank, nkeys);
    if (dm_dist_agree(rc))
        return -1;
    if (nkeys == 0)
        return 0;

    int *group = dm_xmalloc((size_t)size * sizeof *group);
    unsigned char *have = NULL, *all = NULL;
    sync_state s = {0};
    if (cache_groups(cache, group)) {
        rc = -1;
        goto end;
    }
    int shared = 1;
    for (int r = 0; r < size; r++)
        shared &= group[r] == 0;
    if (shared) {
        last_stats.shared = 1;
        goto end;
    }
    have = dm_xcalloc((size_t)nkeys, 1);
    all = dm_xcalloc((size_t)nkeys, (size_t)size);
    for (int k = 0; k < nkeys; k++) {
        char *node = dm_xasprintf("%s/%s/node.json", cache, keys[k]);
        have[k] = dm_file_exists(node) != 0;
        free(node);
    }
    if (t_allgather(have, all, (size_t)nkeys)) {
        rc = -1;
        goto end;
    }
    for (int k = 0; k < nkeys; k++) {
        int sender = -1, moved = 0, failed = 0;
        for (int r = 0; r < size && sender < 0; r++)
            if (all[(size_t)r * nkeys + k])
                sender = r;
        if (sender < 0)
            continue; /* nobody holds it */
        for (int g = 0; g < size; g++) {
            if (group[g] != g)
                continue; /* not the first rank of its folder */
            int held = 0;
            for (int r = g; r < size && !held; r++)
                held = group[r] == g && all[(size_t)r * nkeys + k];
            if (held)
                continue;
            moved = 1;
            if ((D.rank == sender || D.rank == g) && !s.buf)
                s.buf = dm_xmalloc(sizeof(piece_head) + PIECE);
            if (D.rank == sender && send_entry(&s, cache, keys[k], g, failed))
                failed = 1;
            else if (D.rank == g && recv_entry(&s, cache, keys[k], sender))
                failed = 1;
        }
        if (moved && dm_dist_agree(failed ? -1 : 0)) {
            rc = -1;
            break;
        }
    }
end:
    last_stats.entries_sent = s.st.entries_sent;
    last_stats.entries_received = s.st.entries_received;
    last_stats.files_sent = s.st.files_sent;
    last_stats.files_received = s.st.files_received;
    last_stats.bytes_sent = s.st.bytes_sent;
    last_stats.bytes_received = s.st.bytes_received;
    free(s.buf), free(have), free(all), free(group);
    return rc;
}

/* ---- progress --------------------------------------------------------------
 * mine: this rank's last posted counts. On rank 0, latest[r] is rank r's last
 * received counts (r > 0) and final the sums the last reset found. A rank
 * other than 0 keeps one send in flight at most, from sendbuf. */

static struct {
    int64_t mine[3], final[3];
    int64_t *latest; /* rank 0: size x 3 */
    int64_t sendbuf[3];
    double last_send;
#if DM_MPI
    MPI_Request req;
#endif
    int in_flight;
} P;

#if DM_MPI
static void progress_init(void)
{
    memset(P.mine, 0, sizeof P.mine);
    P.latest = dm_xcalloc((size_t)D.size * 3, sizeof *P.latest);
    P.last_send = -1;
    P.in_flight = 0;
}
#endif

static void progress_free(void)
{
    free(P.latest);
    P.latest = NULL;
}

void dm_dist_progress_post(int64_t units_done, int64_t rows, int64_t bytes)
{
    P.mine[0] = units_done, P.mine[1] = rows, P.mine[2] = bytes;
#if DM_MPI
    if (!D.active || D.rank == 0)
        return;
    int done = 1, err;
    if (P.in_flight && MPI_CHECK(MPI_Test(&P.req, &done, MPI_STATUS_IGNORE), "MPI_Test")) {
        dm_warn("progress: %s", dm_error());
        return;
    }
    if (!done)
        return;
    P.in_flight = 0;
    double now = dm_now();
    if (P.last_send >= 0 && now - P.last_send < POST_INTERVAL)
        return;
    memcpy(P.sendbuf, P.mine, sizeof P.sendbuf);
    if (MPI_CHECK(MPI_Isend(P.sendbuf, 3, MPI_INT64_T, 0, TAG_POST, D.pcomm, &P.req), "MPI_Isend"))
        dm_warn("progress: %s", dm_error());
    else
        P.in_flight = 1, P.last_send = now;
#endif
}

void dm_dist_progress_totals(int64_t *units, int64_t *rows, int64_t *bytes)
{
    int64_t sum[3] = {P.mine[0], P.mine[1], P.mine[2]};
#if DM_MPI
    if (D.active && D.rank == 0) {
        int flag = 1, err;
        MPI_Status st;
        while (flag) {
            if (MPI_CHECK(MPI_Iprobe(MPI_ANY_SOURCE, TAG_POST, D.pcomm, &flag, &st), "MPI_Iprobe")) {
                dm_warn("progress: %s", dm_error());
                break;
            }
            if (flag && MPI_CHECK(MPI_Recv(P.latest + 3 * st.MPI_SOURCE, 3, MPI_INT64_T, st.MPI_SOURCE, TAG_POST,
                                           D.pcomm, MPI_STATUS_IGNORE), "MPI_Recv")) {
                dm_warn("progress: %s", dm_error());
                break;
            }
        }
        for (int r = 1; r < D.size; r++)
            for (int i = 0; i < 3; i++)
                sum[i] += P.latest[3 * r + i];
    }
#endif
    if (units)
        *units = sum[0];
    if (rows)
        *rows = sum[1];
    if (bytes)
        *bytes = sum[2];
}

void dm_dist_progress_reset(void)
{
    memcpy(P.final, P.mine, sizeof P.final);
#if DM_MPI
    if (D.active && D.size > 1) {
        int err;
        if (D.rank != 0) {
            /* the last counts after any post in flight: rank 0 reads up to them */
            if (P.in_flight && MPI_CHECK(MPI_Wait(&P.req, MPI_STATUS_IGNORE), "MPI_Wait"))
                dm_warn("progress: %s", dm_error());
            P.in_flight = 0;
            if (MPI_CHECK(MPI_Send(P.mine, 3, MPI_INT64_T, 0, TAG_END, D.pcomm), "MPI_Send"))
                dm_warn("progress: %s", dm_error());
        } else {
            for (int r = 1; r < D.size; r++) {
                MPI_Status st;
                do { /* MPI keeps one sender's messages in order: END comes last */
                    if (MPI_CHECK(MPI_Recv(P.latest + 3 * r, 3, MPI_INT64_T, r, MPI_ANY_TAG, D.pcomm, &st),
                                  "MPI_Recv")) {
                        dm_warn("progress: %s", dm_error());
                        break;
                    }
                } while (st.MPI_TAG != TAG_END);
                for (int i = 0; i < 3; i++)
                    P.final[i] += P.latest[3 * r + i];
            }
        }
        /* no rank posts for the next phase before rank 0 has read this one's END */
        if (MPI_CHECK(MPI_Barrier(D.pcomm), "MPI_Barrier"))
            dm_warn("progress: %s", dm_error());
    }
#endif
    memset(P.mine, 0, sizeof P.mine);
    if (P.latest)
        memset(P.latest, 0, (size_t)D.size * 3 * sizeof *P.latest);
    P.last_send = -1;
}

void dm_dist_progress_final(int64_t *units, int64_t *rows, int64_t *bytes)
{
    if (units)
        *units = P.final[0];
    if (rows)
        *rows = P.final[1];
    if (bytes)
        *bytes = P.final[2];
}
