/*
 * sae.h: sparse autoencoders in the SAELens format, applied to rows of
 * activations, and the statistics of what they leave unexplained.
 *
 * A SAELens folder holds cfg.json, sae_weights.safetensors and optionally
 * sparsity.safetensors (SAELens, the sae_lens/saes package). Gemma Scope's
 * original release is read too: a params.npz (numpy.savez of W_enc, W_dec,
 * b_enc, b_dec, threshold; io/npz.h), given as the file or as a folder that
 * holds it and no cfg.json, with the settings SAELens's gemma_2 loader gives
 * it (JumpReLU, no b_dec on the input, no normalisation, context 1024, BOS,
 * no centring) and the hook its release path names (sae.c, "Gemma Scope").
 * For each row x (d_in):
 *
 *   x'    = normalise(x)                     (none | x*s | x*sqrt(d_in)/|x| | layer norm)
 *   x_in  = x' - b_dec  if apply_b_dec_to_input, else x'
 *   pre   = x_in @ W_enc + b_enc             (d_sae)
 *   f     = standard: relu(pre)
 *           jumprelu: relu(pre) * (pre > threshold)
 *           topk:     relu of the k largest pre, zero elsewhere
 *   x_hat = denormalise(f @ W_dec + b_dec)   (d_in)
 *   e     = x - x_hat                        the residual ("dark matter")
 *
 * Backends. The kernels are reached through a table, dm_sae_backend, chosen
 * once from the compute context (compute.h) when a node opens:
 *   "cpu"  encodes a tile of rows by column panels of W_enc (single-threaded
 *          GEMMs spread over the context's threads: dm_sgemm on the panels
 *          packed at load where the context has AVX-512F, else OpenBLAS), runs
 *          the activation and the extraction of the active features on each
 *          panel while it is in cache, and decodes from the active features
 *          only: a few dozen W_dec rows per token instead of d_sae. Nothing
 *          N x d_sae exists; nothing tile x d_sae either, except for topk,
 *          which needs whole rows. Its statistics take blocks of rows.
 *   "ref"  the plain, row-at-a-time version of the same formulas: a dense
 *          pre-activation vector, a dense decode in double, and statistics
 *          updated one row at a time with stats.h's reference updates.
 *   "cuda" (gpu/sae.cu, from libdmica-cuda.so where a GPU is) the same on the
 *          GPU: the weights uploaded once per work, the encoder and decoder as
 *          dense cuBLAS GEMMs in the precision c->gemm says, the activation
 *          and the extraction of the actives in kernels; its statistics take
 *          the rows its last forward left on the GPU and compute a block's
 *          aggregates there (dm_sae_block), which the host merges.
 * tests/test_sae.c runs every entry against "ref".
 *
 * Rows with a NaN or Inf anywhere are not encoded: their reconstruction and
 * residual rows are all NaN (the input had no meaningful reconstruction; a
 * NaN passes visibly to anything downstream rather than a made-up number),
 * they have no active features, and dm_sae_stats leaves them out.
 *
 * Errors follow dm.h: -1 / NULL with dm_fail() or dm_failc(), messages naming
 * the folder, file, key or tensor and, for a shape mismatch, both shapes. Codes:
 * DM_E_IO for a folder or file that cannot be read, DM_E_CORRUPT for a cfg.json
 * or weights file that is not what it says (a missing or ill-typed key or
 * tensor), DM_E_SHAPE for shapes that do not fit, DM_E_INPUT for settings dmica
 * does not support.
 */
#ifndef DM_SAE_H
#define DM_SAE_H

#include <stdint.h>

#include "compute.h"
#include "dm.h"
#include "stats.h"

typedef enum { DM_SAE_STANDARD = 0, DM_SAE_JUMPRELU, DM_SAE_TOPK } dm_sae_arch;

typedef enum {
    DM_SAE_NORM_NONE = 0,
    DM_SAE_NORM_EXPECTED_AVERAGE, /* "expected_average_only_in": x * scaling_factor */
    DM_SAE_NORM_CONSTANT,         /* "constant_norm_rescale": x * sqrt(d_in) / |x| */
    DM_SAE_NORM_LAYER,            /* "layer_norm": (x - mean) / (std + 1e-5), std with n-1 */
} dm_sae_norm;

/* What cfg.json says, with SAELens's defaults for keys old configs lack.
 * Strings are owned by the config (dm_sae_config_free). */
typedef struct {
    int64_t d_in, d_sae;
    dm_sae_arch arch;
    int64_t k;                  /* topk only */
    int apply_b_dec_to_input;   /* default 1 */
    dm_sae_norm norm;           /* default none */
    int finetuning_scaling_factor; /* old configs: decode multiplies f by the scaling_factor tensor */
    char *hook_name;            /* "hook_name", older "hook_point"; "" if absent */
    char *model_name;           /* "" if absent */
    char *dataset_path;         /* "" if absent */
    /* Model settings the SAE was trained with (issue 6's pipelines follow them):
     * -1 where the config does not say. */
    int center_writing_weights; /* model_from_pretrained_kwargs.center_writing_weights */
    int prepend_bos;            /* default 1 (SAELens default) */
    int64_t context_size;       /* -1 if absent */
} dm_sae_config;

/* Reads dir/cfg.json, or a Gemma Scope params.npz's settings (dir the file,
 * or a folder with params.npz and no cfg.json: d_in and d_sae from W_enc's
 * shape, every array checked as dm_sae_check does, hook_name from the release
 * path or ""). Keys are looked up at the top level, then in "metadata"
 * or "meta" (SAELens 6 nests hook_name, prepend_bos, context_size and
 * model_from_pretrained_kwargs there). Old names: hook_point, activation_fn_str,
 * a boolean normalize_activations. Fails on a missing d_in / d_sae, an unknown
 * architecture or normalisation (naming the accepted ones), topk without k, or
 * a boolean key (apply_b_dec_to_input, prepend_bos, ...) holding something
 * other than true, false or an integer.
 * On success cfg owns its strings; on failure cfg is left empty. */
int dm_sae_read_config(const char *dir, dm_sae_config *cfg);
void dm_sae_config_free(dm_sae_config *cfg); /* accepts zeroed */
/* The model settings of dir's cfg.json, or none: with dir "" cfg is left with
 * hook_name NULL and center_writing_weights, prepend_bos, context_size -1. */
int dm_sae_settings(const char *dir, dm_sae_config *cfg);
const char *dm_sae_arch_name(dm_sae_arch a);  /* "standard", "jumprelu", "topk" */
const char *dm_sae_norm_name(dm_sae_norm n);  /* as cfg.json spells it */

/* A loaded SAE. Parameters are float32 and owned by the struct. */
typedef struct {
    dm_sae_config cfg;
    char *dir;
    float *W_enc;     /* (d_in, d_sae) */
    float *W_enc_packed; /* W_enc's panels of 512 columns, each packed for dm_sgemm
                            (sgemm.h); NULL unless loaded for the "cpu" backend
                            with AVX-512F */
    float *W_dec;     /* (d_sae, d_in); times scaling_factor per row when
                         cfg.finetuning_scaling_factor */
    float *b_enc;     /* (d_sae) */
    float *b_dec;     /* (d_in) */
    float *threshold; /* (d_sae) jumprelu only: max(threshold, 0), from
                         threshold or exp(log_threshold) */
    float *log_sparsity; /* (d_sae) log10 firing density from sparsity.safetensors, or NULL */
    double scaling_factor; /* expected_average_only_in: x is multiplied by it; else 1 */
} dm_sae;

/* Checks dir's tensors against its config without reading them: every tensor
 * present (W_enc, W_dec, b_enc, b_dec; threshold or log_threshold for jumprelu),
 * floating point, of the right shape. Errors name the file, the tensor and both
 * shapes: "sae/sae_weights.safetensors: tensor W_enc has shape [32, 300], cfg.json
 * (d_in 32, d_sae 256) needs [32, 256]". */
int dm_sae_check(const char *dir, const dm_sae_config *cfg);
/* (For a params.npz: "params.npz: array threshold has shape [15], W_enc's
 * (d_in 8, d_sae 16) needs [16]"; a missing array, one not of floats, a
 * truncated or damaged archive, a compression it cannot read: each named.) */

/* Loads dir (dm_sae_read_config, dm_sae_check, then the weights). scaling_factor
 * is the normalisation factor of expected_average_only_in SAEs; SAELens keeps it
 * outside the folder (its pretrained_saes.yaml norm_scaling_factor, folded into
 * the weights at load), so the caller passes it: > 0 to use it, 0 for "not
 * known", which fails for such an SAE and is ignored for the others. An optional
 * scaling_factor tensor is ignored unless the config sets
 * finetuning_scaling_factor. c says which backend will run it: W_enc is packed
 * for dm_sgemm when that is "cpu" and c->avx512. Free with dm_sae_free. */
dm_sae *dm_sae_load(const char *dir, double scaling_factor, const dm_compute *c);
/* Floats dm_sae_load adds for W_enc packed for dm_sgemm under c (0 if none). */
int64_t dm_sae_packed_floats(int64_t d_in, int64_t d_sae, const dm_compute *c);
void dm_sae_free(dm_sae *s); /* accepts NULL */
/* A standard ReLU SAE without b_dec on the input (normalisation none) from
 * arrays in memory, copied: W_enc (d_in, d_sae), W_dec (d_sae, d_in), b_enc
 * (d_sae), b_dec (d_in). One another node made (the demo's planted SAE) and
 * handed on; name stands for its folder in messages and dm_sae_result_json.
 * c as for dm_sae_load. */
dm_sae *dm_sae_from_arrays(int64_t d_in, int64_t d_sae, const char *hook_name, const char *name,
                           const float *W_enc, const float *W_dec, const float *b_enc, const float *b_dec,
                           const dm_compute *c);

/* ---- the kernel --------------------------------------------------------- */

/* Active features of a block of rows, compressed by row: the features of row r
 * are feature[start[r] .. start[r+1]) with their values, in increasing feature
 * order (standard, jumprelu) or any order (topk). */
typedef struct {
    int64_t rows;
    int64_t *start;   /* (rows + 1) */
    int32_t *feature; /* (start[rows]) */
    float *value;     /* (start[rows]) */
    int64_t cap_rows, cap;
} dm_sae_sparse;

void dm_sae_sparse_free(dm_sae_sparse *sp); /* accepts zeroed */
/* For backends: sp emptied (rows 0, start[0] = 0) with room for rows + 1
 * starts; room for n actives (contents kept). */
void dm_sae_sparse_reset(dm_sae_sparse *sp, int64_t rows);
void dm_sae_sparse_reserve(dm_sae_sparse *sp, int64_t n);

/* Scratch for a backend's forward: a panel of pre-activations per thread (tile
 * x 512 floats; topk: one tile, tile x d_sae) and per-thread lists, for c's
 * threads. Reusable across calls; free with dm_sae_work_free. For c's "cuda"
 * backend these CPU buffers are made only if a CUDA error sends the work to
 * the CPU (then for tiles of at most 256 rows), and the GPU's state lives in
 * the work's device slot below. */
typedef struct dm_sae_work dm_sae_work;
dm_sae_work *dm_sae_work_new(const dm_sae *s, int64_t tile, const dm_compute *c);
void dm_sae_work_free(dm_sae_work *w); /* accepts NULL; releases the device slot */
/* For a device backend (gpu/sae.cu): the tile and the context (a copy of c)
 * the work was made with, and a slot for the backend's state for this SAE
 * (weights and buffers on the device), NULL until set; dm_sae_work_free calls
 * release(state). */
int64_t dm_sae_work_tile(const dm_sae_work *w);
const dm_compute *dm_sae_work_compute(const dm_sae_work *w);
void *dm_sae_work_device(const dm_sae_work *w);
void dm_sae_work_set_device(dm_sae_work *w, void *state, void (*release)(void *state));
int64_t dm_sae_work_bytes(const dm_sae *s, int64_t tile, const dm_compute *c);
/* Bytes of the tile buffers, for budgets made before the SAE is loaded: an upper
 * bound (a whole tile x d_sae, as topk needs). */
int64_t dm_sae_tile_bytes(int64_t d_in, int64_t d_sae, int64_t tile);

typedef struct dm_sae_stats dm_sae_stats;

/* A backend: the kernels of one kind of hardware. */
typedef struct dm_sae_backend {
    const char *name; /* "ref", "cpu", "cuda" */
    /* x (rows, d_in) -> recon (rows, d_in), residual (rows, d_in), and the
     * active features into sp (reset, then resized as needed): normalise,
     * encode (x_in @ W_enc + b_enc), activation, decode from the actives,
     * denormalise, e = x - x_hat. recon or residual may be NULL. Returns the
     * number of rows that were not finite (their outputs are NaN, see above).
     * w comes from dm_sae_work_new with the same s. "cuda" keeps x, the dense
     * activations, recon and residual on the GPU for the next stats_update
     * when rows <= dm_sae_work_tile(w). */
    int64_t (*forward)(dm_sae_work *w, const dm_sae *s, const float *x, int64_t rows, float *recon,
                       float *residual, dm_sae_sparse *sp);
    /* One block of the statistics: x, recon, residual (rows, d_in) and its
     * active features, as forward made them. Non-finite rows of x are counted
     * and skipped. w is the work of that forward: "ref" and "cpu" ignore it
     * (it may be NULL there); "cuda" uses the rows its last forward on w left
     * on the GPU when x, recon, residual and rows are that forward's (the
     * arrays unchanged since), and uploads them (the actives from sp)
     * otherwise. */
    void (*stats_update)(dm_sae_work *w, dm_sae_stats *st, const float *x, const float *recon,
                         const float *residual, const dm_sae_sparse *sp, int64_t rows);
    /* NULL, or: the copy in the device's memory of the first rows of the
     * recon or residual array host that the last forward on w wrote (in one
     * pass, rows of them at most), or NULL; valid until the next call on w.
     * A node hands it on as its chunks' dev (dm.h). */
    const float *(*device_rows)(dm_sae_work *w, const float *host, int64_t rows);
} dm_sae_backend;

extern const dm_sae_backend dm_sae_backend_ref, dm_sae_backend_cpu;

/* The backend for c: "ref" when c->reference, else the device's: "cuda" for
 * DM_DEVICE_CUDA when libdmica-cuda.so is there and sees a GPU, else "cpu". */
const dm_sae_backend *dm_sae_backend_for(const dm_compute *c);
/* The "cuda" entry, or NULL where there is no GPU library or device (device.h). */
const dm_sae_backend *dm_sae_backend_cuda(void);
/* Rows a forward call of be takes at once, for the operator: the `tile` asked
 * for on the CPU; on the GPU the chunk (`chunk` rows), bounded so that the
 * dense activations (rows x d_sae floats) stay within 1 GiB of GPU memory,
 * and never below `tile`. */
int64_t dm_sae_backend_tile(const dm_sae_backend *be, int64_t d_sae, int64_t tile, int64_t chunk);

/* ---- statistics --------------------------------------------------------- */

/* Streaming statistics of an SAE over a token stream (definitions in
 * docs/sae.md), updated by a backend's stats_update. Mergeable: every part is
 * a count, a sum or a dm_moments / dm_covariance accumulator. */

/* predictability: also accumulate cov(x) and cov(e, x) for the linear
 * predictability of e from x ("cpu": 2 d_in^2 float multiply-adds a token on
 * c's threads, merged in double every 256 rows; sae.c's cov_update states the
 * error). */
dm_sae_stats *dm_sae_stats_new(int64_t d_in, int64_t d_sae, int predictability, const dm_compute *c);
void dm_sae_stats_free(dm_sae_stats *st); /* accepts NULL */
int64_t dm_sae_stats_bytes(int64_t d_in, int64_t d_sae, int predictability);

/* Shards (op.h, save_partial): the statistics of one shard saved whole in a
 * folder, and merged into another accumulator of the same sizes in shard order:
 * counts and sums added, moments and co-moments merged with stats.h's formulas,
 * so the result is that of one pass over all shards up to rounding (the merge
 * order of the sums differs), and bitwise that of the shard itself when merged
 * into a new accumulator. Files, all .npy in dir:
 *   sae_counts.npy      i64 [n, nonfinite, cos_undefined, l0_sum, l0_max,
 *                            l0_histogram (d_sae + 1), count (d_sae)]
 *   sae_sums.npy        f64 [sse, cos_sum]
 *   x_moments.npy, e_moments.npy, feature_moments.npy   (stats.h's layout)
 *   cov_xx.npy, cov_ex.npy   with predictability only
 * Load fails (NULL) with DM_E_CORRUPT naming the file when one is truncated or
 * of other sizes, DM_E_IO when one is missing. */
int dm_sae_stats_save(const dm_sae_stats *st, const char *dir);
dm_sae_stats *dm_sae_stats_load(const char *dir, int64_t d_in, int64_t d_sae, int predictability,
                                const dm_compute *c);
/* a <- a merged with b; DM_E_SHAPE when their sizes or predictability differ. */
int dm_sae_stats_merge(dm_sae_stats *a, const dm_sae_stats *b);

/* One block of rows' statistics, computed by a backend on its own (gpu/sae.cu)
 * and merged into the running ones with dm_sae_stats_add_block: the block's
 * own accumulators over its n finite rows, as stats_update_cpu makes them. */
typedef struct {
    int64_t d_in, d_sae;
    int predictability;
    int64_t n, nonfinite;      /* finite rows, and the others (skipped) */
    double sse, cos_sum;       /* sums over the finite rows, in row order */
    int64_t cos_undefined, l0_sum, l0_max;
    int64_t *l0_hist;          /* (d_sae + 1) */
    int64_t *count;            /* (d_sae) rows each feature fired on */
    dm_moments mx, me;         /* (d_in) of x and of e */
    dm_moments feat;           /* (d_sae) the features' central moments, zeros included */
    dm_covariance cxx;         /* with predictability: cov(x) */
    dm_xcovariance cex;        /* and cov(e, x) (mean_x is e's, mean_y x's) */
} dm_sae_block;

/* An empty block sized for st (co-moments only with its predictability). */
void dm_sae_block_init(dm_sae_block *b, const dm_sae_stats *st);
void dm_sae_block_free(dm_sae_block *b); /* accepts zeroed */
/* st <- st with b merged in: counts and sums added, moments and co-moments
 * merged with stats.h's formulas. DM_E_SHAPE when b was sized for other
 * statistics. */
int dm_sae_stats_add_block(dm_sae_stats *st, const dm_sae_block *b);

/* Results. Per-feature arrays are (d_sae) and owned by the result. */
typedef struct {
    int64_t n;          /* finite rows used */
    int64_t nonfinite;  /* rows skipped for NaN/Inf */
    int64_t d_in, d_sae;
    double fvu, explained_variance;
    double mse;              /* mean of e^2 over tokens and dims */
    double sse_per_token;    /* mean over tokens of sum_j e_j^2 (SAELens mse_loss) */
    double mean_cosine;      /* mean cos(x, x_hat) over tokens where both norms are > 0 */
    int64_t cosine_undefined; /* tokens left out of mean_cosine */
    double mean_l0;
    int64_t l0_max;
    int64_t *l0_histogram;   /* (d_sae + 1): tokens with exactly L0 active features */
    int64_t dead, dense;     /* features firing on no token, on > 0.1% of tokens */
    double linear_predictability; /* tr(Cex Cxx^+ Cxe) / tr(Cee); NaN if not computed */
    int64_t predictability_rank;  /* eigenvalues of Cxx kept (relative floor 1e-10) */
    double var_x, var_e;     /* sum over dims of the variances (tr Cxx, tr Cee) */
    int64_t *count;          /* (d_sae) tokens each feature fired on */
    double *frequency, *mean, *var, *skew, *excess_kurtosis; /* (d_sae), over all tokens */
} dm_sae_result;

/* -1 with dm_fail() if no finite row was seen or a LAPACK call fails. */
int dm_sae_stats_finalize(const dm_sae_stats *st, dm_sae_result *r);
void dm_sae_result_free(dm_sae_result *r); /* accepts zeroed */
/* The result as a JSON document (NaN as null), with sae's settings. Caller frees. */
char *dm_sae_result_json(const dm_sae_result *r, const dm_sae *s);

/* The SAE's config against an input: the hook name (when both are known) and the
 * width (when width >= 0; DM_E_SHAPE if it differs). dir names the SAE in
 * messages. */
int dm_sae_check_input(const dm_sae_config *c, const char *dir, const char *hook, int64_t width);

#endif
