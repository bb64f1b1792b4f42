/*
 * dist.h: the processes of one run (MPI ranks), and what they exchange.
 *
 * `mpirun -np N dmica run ...` starts N processes, the ranks 0 .. N-1; every
 * function here is the same call whether N is 1, N is larger, or dmica was
 * built without MPI. A plain start (no launcher) never touches MPI: it is rank
 * 0 of 1, and every collective below is a cheap no-op that returns at once.
 *
 * Collective functions (marked so) must be called by every rank, in the same
 * order, with the same arguments where they say so; a rank that skips one
 * makes the others wait for ever. That is why errors are agreed on
 * (dm_dist_agree) rather than returned early by one rank alone: a rank that
 * failed still takes part in the next collective, which tells the others.
 * Errors are the engine's (dm.h): -1 with a message and a code.
 *
 * Threads: call these from the thread that called dm_dist_init (MPI is
 * initialised with MPI_THREAD_FUNNELED); OpenMP regions may run in between.
 */
#ifndef DM_DIST_H
#define DM_DIST_H

#include "dm.h"

/* ---- the ranks ----------------------------------------------------------- */

/* Joins the run's ranks when a launcher started this process (mpirun: the
 * environment holds OMPI_COMM_WORLD_SIZE; srun --mpi=pmix or pmi2, MPICH's
 * Hydra: PMIX_RANK, PMI_RANK or PMI_SIZE), by calling MPI_Init_thread with
 * argc and argv; otherwise does nothing (rank 0 of 1). Fails (DM_E_USAGE) when
 * a launcher started several processes and they cannot be joined: a build
 * without MPI, or srun without a PMI plugin. Call it once, before any other
 * function here; calling it again does nothing. */
int dm_dist_init(int *argc, char ***argv);
/* Collective (when MPI is in use): drains progress messages
 * (dm_dist_progress_reset) and calls MPI_Finalize. Afterwards this is rank 0
 * of 1 again. Safe to call without dm_dist_init, and twice. */
void dm_dist_finalize(void);
int dm_dist_rank(void); /* 0 .. size-1; 0 without MPI */
int dm_dist_size(void); /* 1 without MPI */
/* 1 when this dmica was built with MPI (DM_MPI), whether or not it is in use. */
int dm_dist_built(void);
/* 1 between dm_dist_init's MPI_Init and dm_dist_finalize (mpirun -np 1 too). */
int dm_dist_active(void);
/* Collective: returns when every rank has called it. An MPI failure is a
 * warning (the job is lost anyway: mpirun stops every rank). */
void dm_dist_barrier(void);

/* ---- errors -------------------------------------------------------------- */

/*
 * Collective: agrees on failure. Every rank passes its own rc (0, or -1 with
 * its error recorded by dm_fail*). Returns 0 on every rank when every rc was 0;
 * otherwise -1 on every rank. A rank that failed keeps its own error; every
 * other rank gets the error of the lowest failing rank R, message prefixed
 * "rank R: " and the same code (so dm_error_exit() gives the same status class:
 * 2 for usage, 130 for interrupted, 1 otherwise). A nonzero rc without a
 * recorded error becomes DM_E_INTERNAL. One rank: rc ? -1 : 0, the error kept.
 */
int dm_dist_agree(int rc);

/* ---- broadcasts and gathers ---------------------------------------------- */

/* Collective: rank `root`'s n bytes of buf into every rank's buf (n the same on
 * every rank; any size: sent in pieces). -1 on an MPI failure. */
int dm_dist_bcast_bytes(void *buf, size_t n, int root);
/* Collective: rank 0's text (a plan, a JSON document; NULL allowed) to every
 * rank. *out gets a malloc'd copy on every rank, rank 0 included (NULL when
 * rank 0 passed NULL); `text` is read on rank 0 only. Free *out with free(3).
 * -1 on an MPI failure (*out NULL). */
int dm_dist_bcast_text(const char *text, char **out);
/* Collective: all (size x n doubles, rank order) gets every rank's n doubles
 * `mine` (n the same on every rank; mine may lie inside all). The values are
 * copied bit for bit, so a sum taken over `all` in rank order is the same on
 * every rank. -1 on an MPI failure. */
int dm_dist_allgather_doubles(const double *mine, int n, double *all);

/* ---- cache entries ------------------------------------------------------- */

/*
 * Collective: makes every rank's cache folder hold every entry that some rank
 * holds, of the nkeys keys (the same keys in the same order on every rank:
 * checked, DM_E_INTERNAL otherwise). `cache` is this rank's cache folder: one
 * shared by all ranks (a shared file system), one per rank, or any mix (one
 * per machine). An entry CACHE/<key>/ is held when CACHE/<key>/node.json
 * exists (cache.c: an entry that exists is complete).
 *
 * Which ranks share a folder is found once per combination of folders (every
 * rank creates a token file in CACHE/tmp and looks for the others'): nothing
 * is sent between ranks that share one. For each key that some folder lacks,
 * the lowest rank that holds the entry sends every file of it (relative path,
 * mode, size, then the bytes in pieces of at most 64 MiB and an XXH3-64 of
 * each file) to the lowest rank of that folder, which writes it into
 * CACHE/tmp/<key>.<pid>.<start>.sync, node.json last, syncs it (when the file
 * system is durable, fs.h) and renames it into place: a complete entry or
 * none. An entry that appears meanwhile (another rank of the same folder) is
 * kept. Keys that no rank holds are skipped.
 *
 * Errors (a full disk, an unreadable or non-regular file, a checksum that does
 * not match) are agreed after each key as dm_dist_agree does: every rank
 * returns -1, the failing rank with its message, the others with "rank R: ...";
 * the entry being written is removed, the entries already placed stay.
 */
int dm_dist_sync_entries(const char *cache, char *const *keys, int nkeys);
/* What the last dm_dist_sync_entries did on this rank. */
typedef struct {
    int shared;               /* every rank saw one folder: nothing was sent */
    int entries_sent, entries_received;
    int64_t files_sent, files_received;
    int64_t bytes_sent, bytes_received; /* file bytes, without headers */
} dm_dist_sync_stats;
void dm_dist_sync_last(dm_dist_sync_stats *out);

/* ---- progress ------------------------------------------------------------ */

/*
 * Progress of a phase over all ranks, for rank 0 to show. Counts are
 * cumulative within a phase (units: shards done; rows; bytes spilled), posted
 * by each rank whenever it likes (a chunk, a shard):
 *
 *   dm_dist_progress_post: records this rank's counts. On a rank other than 0
 *     it also sends them to rank 0 in a small non-blocking message, at most one
 *     in flight and at most one every 50 ms (a newer post replaces an unsent
 *     one; counts are cumulative, so nothing is lost but staleness).
 *   dm_dist_progress_totals (rank 0): receives what has arrived (MPI_Iprobe,
 *     never waits) and returns rank 0's own last posted counts plus every other
 *     rank's last received counts: live figures, each rank's at most ~50 ms
 *     behind its last post. On another rank: its own last posted counts.
 *   dm_dist_progress_reset (collective): ends a phase. Every rank sends its
 *     last counts; rank 0 receives every message up to them, so nothing is in
 *     flight afterwards; no rank leaves before rank 0 has. The counts are then
 *     zero on every rank, and rank 0 keeps the exact totals of the phase that
 *     ended for dm_dist_progress_final. Call it at the start and the end of
 *     every phase in which ranks post.
 *
 * Without MPI, or with one rank, post records and totals returns the record.
 * Any argument of totals and final may be NULL.
 */
void dm_dist_progress_post(int64_t units_done, int64_t rows, int64_t bytes);
void dm_dist_progress_totals(int64_t *units, int64_t *rows, int64_t *bytes);
void dm_dist_progress_reset(void);
/* Rank 0: the sums of every rank's last counts in the phase the last
 * dm_dist_progress_reset ended (exact). Other ranks: their own. */
void dm_dist_progress_final(int64_t *units, int64_t *rows, int64_t *bytes);

#endif
