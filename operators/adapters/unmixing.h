/*
 * unmixing.h: what the two unmixing operators, fastica (op_fastica.c) and rica
 * (op_rica.c), share around their different optimisers.
 *
 *   - the parameters both take: seed, seeds, stable, warm_start, warm_rows,
 *     memory, file, and the width of z;
 *   - the way through the whitened input z: in RAM when its rows are known and
 *     fit `memory` (z is then read in one pass and copied), streamed otherwise;
 *     with `warm_start`, the first pass also keeps a uniform sample of
 *     `warm_rows` rows (reservoir sampling, Vitter's Algorithm R);
 *   - the seeds: every seed's rows matched to the first seed's (the Hungarian
 *     algorithm on |cos|, dm_ica_match), the stability of each component (its
 *     smallest matched |cos|), and the product's common fields;
 *   - the typed summary for the report (summaries.h).
 *
 * An operator embeds a dm_unmix in its state, calls dm_unmix_open() at open,
 * dm_unmix_first_pass() on each chunk of the first pass, dm_unmix_end_pass()
 * at each pass's end, and dm_unmix_publish() at finish.
 */
#ifndef DM_UNMIXING_H
#define DM_UNMIXING_H

#include <jansson.h>
#include <stdint.h>

#include "op.h"

typedef struct {
    int64_t k;          /* width of z */
    int64_t rows_known; /* rows announced by the producer (-1: unknown) */
    int in_ram;
    float *ram;         /* (rows_known, k) when in RAM */
    int64_t ram_rows;
    float *sample;      /* (warm_rows, k) the warm start's reservoir; NULL without */
    int64_t warm_rows, sample_rows;
    int64_t seen;       /* rows of the first pass (every shard's and rank's, once merged) */
    uint64_t rng;       /* the reservoir's and shuffles' generator (dm_splitmix64) */
    int passes;         /* passes over z ended */
    int split;          /* the engine split passes by shard: sums arrive through pass_merge */
    double t_open, t_warm, t_iter;
} dm_unmix;

/* The parameters both operators declare, to be appended to their own (the
 * list ends with {NULL}). DM_UNMIX_PARAMS(product file). */
#define DM_UNMIX_PARAMS(file)                                                                                   \
    {"seed", DM_P_INT, "42", "seed of the first run"},                                                          \
        {"seeds", DM_P_INT, "3", "runs from seeds seed, seed+1, ...: stability across them"},                   \
        {"stable", DM_P_FLOAT, "0.9", "a component whose matched |cos| falls below this is unstable"},          \
        {"warm_start", DM_P_BOOL, "false", "iterate on a subsample first, then on all rows"},                   \
        {"warm_rows", DM_P_INT, "100000", "rows of the warm-start subsample"},                                  \
        {"memory", DM_P_SIZE, "0", "keep z in RAM when it fits in this many bytes (0: stream every pass)"},     \
        {"file", DM_P_STRING, file, "product file (\"\" to publish nothing)"}

/* Checks the shared parameters and z's width k (method names the operator in
 * messages). 0, or -1 with the reason. */
int dm_unmix_check(const dm_node *n, int64_t k, const char *method);

/* In RAM when the row count is known and the float32 copy fits `memory`;
 * *bytes the copy's size. */
int dm_unmix_in_ram(const dm_node *n, int64_t *bytes);

/* For infer(): declares z single-pass when the node will hold it in RAM. */
void dm_unmix_infer(dm_node *n);

/* The bytes of the in-RAM copy and the warm-start sample, for state_bytes(). */
int64_t dm_unmix_bytes(const dm_node *n);

/* Plans the way through z and allocates the copy and the sample. */
void dm_unmix_open(dm_unmix *u, const dm_node *n);
void dm_unmix_free(dm_unmix *u);

/* A chunk of z: checks its width; in the first pass, copies it (in RAM) and
 * samples it (warm start). */
int dm_unmix_consume(dm_unmix *u, const dm_chunk *c);

/* The end of pass `pass`: counts it and checks the rows (none: "no rows to run
 * METHOD on"; in RAM, as many as announced). merged_rows: the rows the merged
 * sums saw, which is the first pass's count when the engine split it. */
int dm_unmix_end_pass(dm_unmix *u, int pass, int64_t merged_rows, const char *method);

/* Matches seeds to the first: W (S, K, k) every seed's rows. Writes
 * unmixings (S, K, k: seed i's rows permuted and sign-flipped to match seed
 * 0's), match (S, K: the row of seed i matched to component j), stability (K:
 * the smallest matched |cos|), and appends "match", "sign" and
 * "matched_abs_cos" to each seeds[i]. */
void dm_unmix_match_seeds(const double *W, int64_t S, int64_t K, int64_t k, double *unmixings, int64_t *match,
                          double *stability, json_t *const *seeds);

/* What a run reports beyond its optimiser: converged[i] per seed. */
typedef struct {
    const char *what;     /* the product's description, e.g. "ica summary" */
    int64_t K, S;         /* components, seeds */
    int iterations;       /* the first seed's */
    const int *converged; /* (S) */
} dm_unmix_result;

/* Adds the common fields to the product o (in_ram, warm_start, passes,
 * stability, stable_threshold, unstable, unstable_count, timings, and the
 * seeds' array, which it takes), publishes it as `file`, and packs the typed
 * summary (dm_ica_summary) into *summary. 0, or -1 with the reason. o stays
 * the caller's. */
int dm_unmix_publish(dm_node *n, const dm_unmix *u, const dm_unmix_result *r, const double *stability,
                     json_t *o, json_t *seeds, dm_tensor *summary);

#endif
