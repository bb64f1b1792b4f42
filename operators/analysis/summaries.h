/*
 * summaries.h: the summaries operators hand each other, as typed structs.
 *
 * A summary travels on a tensor port as a 1-D u8 tensor with a fixed layout:
 *
 *   dm_summary_header   magic, kind, layout version, body and extra sizes
 *   body                the kind's struct below (its exact sizeof)
 *   extra               kind-specific bytes: the product document (sae, ica),
 *                       or the examples' arrays (examples)
 *
 * Readers go through dm_summary_read, which checks the dtype, the magic, the
 * kind, the version and every size, and fails with DM_E_CORRUPT or DM_E_SHAPE
 * naming the tensor: a summary written by another layout is an error, never a
 * silent NaN. Change a struct: bump its DM_SUMMARY_*_VERSION and the versions
 * of the operators that write and read it.
 *
 * The JSON product files (sae_stats.json, ica.json, ica_compare.json,
 * topk.json) stay what users read; the structs are the channel between
 * operators. The sae and ica summaries also carry their product document
 * verbatim, so that the report can copy it into results.json whole; nothing
 * is looked up in it.
 */
#ifndef DM_SUMMARIES_H
#define DM_SUMMARIES_H

#include <stdint.h>

#include "dm.h"

typedef enum {
    DM_SUMMARY_SAE = 1,
    DM_SUMMARY_ICA = 2,
    DM_SUMMARY_COMPARE = 3,
    DM_SUMMARY_EXAMPLES = 4,
} dm_summary_kind;

#define DM_SUMMARY_MAGIC "dmsumry"   /* 8 bytes with its NUL */
#define DM_SUMMARY_SAE_VERSION 1
#define DM_SUMMARY_ICA_VERSION 1
#define DM_SUMMARY_COMPARE_VERSION 1
#define DM_SUMMARY_EXAMPLES_VERSION 1

typedef struct {
    char magic[8];
    uint32_t kind;        /* dm_summary_kind */
    uint32_t version;     /* the kind's layout version */
    uint64_t body_bytes;  /* sizeof the kind's struct */
    uint64_t extra_bytes; /* bytes after the body */
} dm_summary_header;

/* ---- sae: the SAE's statistics (extra: sae_stats.json's text) ---- */
typedef struct {
    int64_t d_in, d_sae, tokens;
    double fvu;                   /* sum var(x - x_hat) / sum var(x) */
    double explained_variance;    /* 1 - fvu */
    double mean_l0;               /* active features a token */
    double linear_predictability; /* R^2 of e from x; NaN when not measured */
} dm_sae_summary;

/* ---- fastica: the run (extra: ica.json's text) ---- */
typedef struct {
    int64_t k, rows, seeds;
    int64_t iterations;     /* of the first seed */
    int64_t converged;      /* the first seed: 1 or 0 */
    int64_t all_converged;  /* 1 or 0 */
    int64_t unstable_count; /* components below the stability threshold */
    int64_t passes;
} dm_ica_summary;

/* ---- ica_compare: back-projection and SAE comparison (no extra) ---- */
#define DM_COS_BINS 20 /* histogram bins of width 0.05 over [0, 1] */
typedef struct {
    int64_t count;
    int64_t high, low; /* above the high, below the low similarity threshold */
    double mean, q05, median, q95, q99; /* NaN when count is 0 */
    int64_t histogram[DM_COS_BINS];
} dm_cos_summary;

typedef struct {
    int64_t k, d;
    int64_t d_sae; /* 0: no decoder, nothing below compared */
    double variance_explained_by_ica;
    double variance_explained_by_unscaled_reconstruction;
    dm_cos_summary similarity;      /* the k patterns */
    dm_cos_summary null_unit;       /* random unit directions */
    dm_cos_summary null_covariance; /* random directions from the covariance */
} dm_compare_summary;

/* ---- topk: the examples of every column (extra: the arrays below) ----
 * extra = dm_examples_column[columns] | int64 counts[total_bins] |
 *         dm_example[total_examples] | char text[text_bytes]
 * Strings are offsets into text (valid UTF-8, not NUL-terminated). */
typedef struct {
    int64_t columns, k;
    int64_t has_text; /* 1: examples carry decoded left/token/right strings */
    int64_t total_bins, total_examples, text_bytes;
} dm_examples_summary;

typedef struct {
    double lo, hi;                    /* the histogram's span */
    int64_t first_bin, bins;          /* into counts */
    int64_t first_example, ntop, nbottom; /* into the examples: top ones, then bottom ones */
} dm_examples_column;

typedef struct {
    double value;
    int64_t row;
    int64_t left, left_len, token, token_len, right, right_len; /* into text */
} dm_example;

/* A parsed examples summary (its own copy of the arrays). */
typedef struct {
    dm_examples_summary s;
    const dm_examples_column *columns;
    const int64_t *counts;
    const dm_example *examples;
    const char *text;
    void *owned;
} dm_examples_view;

/* Writes header, body and extra into t (a fresh 1-D u8 tensor). */
void dm_summary_pack(dm_tensor *t, dm_summary_kind kind, uint32_t version, const void *body, uint64_t body_bytes,
                     const void *extra, uint64_t extra_bytes);

/* Checks t against kind, version and body size; copies the body out and
 * points *extra (may be NULL) into t. `name` names the tensor in errors.
 * 0, or -1 with DM_E_SHAPE (not a 1-D u8 tensor) or DM_E_CORRUPT. */
int dm_summary_read(const dm_tensor *t, const char *name, dm_summary_kind kind, uint32_t version, void *body,
                    uint64_t body_bytes, const uint8_t **extra, uint64_t *extra_bytes);

/* The typed readers. A document's text (sae, ica) is returned in *doc, *len. */
int dm_sae_summary_read(const dm_tensor *t, const char *name, dm_sae_summary *s, const char **doc, size_t *len);
int dm_ica_summary_read(const dm_tensor *t, const char *name, dm_ica_summary *s, const char **doc, size_t *len);
int dm_compare_summary_read(const dm_tensor *t, const char *name, dm_compare_summary *s);
/* Checks every offset of the examples against the arrays' sizes; free the
 * view with dm_examples_view_free (a zeroed view too). */
int dm_examples_summary_read(const dm_tensor *t, const char *name, dm_examples_view *v);
void dm_examples_view_free(dm_examples_view *v);

/* Building an examples summary column by column. */
typedef struct {
    dm_examples_summary s;
    dm_examples_column *columns;
    int64_t *counts;
    dm_example *examples;
    char *text;
    int64_t cap_columns, cap_counts, cap_examples, cap_text;
} dm_examples_builder;

void dm_examples_begin(dm_examples_builder *b, int64_t k, int has_text);
/* A new column with its histogram. */
void dm_examples_column_add(dm_examples_builder *b, double lo, double hi, const int64_t *counts, int64_t bins);
/* An example of the current column: all its top ones first, then its bottom
 * ones (top = 1 or 0). Strings may be NULL without text. */
void dm_examples_add(dm_examples_builder *b, int top, double value, int64_t row, const char *left, size_t left_len,
                     const char *token, size_t token_len, const char *right, size_t right_len);
/* Packs the summary into t and frees the builder. */
void dm_examples_end(dm_examples_builder *b, dm_tensor *t);

#endif
