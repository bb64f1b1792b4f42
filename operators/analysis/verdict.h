/*
 * verdict.h: the analysis's thresholds, in one table, and the verdict: a pure
 * function from typed numbers to a decision.
 *
 * The decision (results.json's verdict.decision):
 *   gaussian_residual     the residual's mean excess kurtosis, and with ICA its
 *                         sources', below `gaussian_kurtosis` in magnitude;
 *   non_gaussian_no_comparison   not Gaussian, but no SAE comparison to judge;
 *   dark_matter_features  stable, non-Gaussian components with max |cos| to
 *                         every SAE decoder row below `low_similarity`, at least
 *                         one and at least as many as the known ones;
 *   sae_knows             stable components above `high_similarity` are more
 *                         than half of all;
 *   mixed                 otherwise.
 * A component is stable when its matched |cos| across seeds is >= `stable`
 * (every component is, without a stability measure) and non-Gaussian when its
 * source's |excess kurtosis| > gaussian_kurtosis (every one is, without source
 * kurtosis).
 */
#ifndef DM_VERDICT_H
#define DM_VERDICT_H

#include <stdint.h>

/* One threshold of the analysis: the table is dm_thresholds[DM_T_COUNT]. */
typedef struct {
    const char *name;
    double value;
    const char *meaning;
    const char *source;
} dm_threshold;

typedef enum {
    DM_T_HIGH_SIMILARITY,  /* max |cos| above: the SAE knows the direction */
    DM_T_LOW_SIMILARITY,   /* max |cos| below: no SAE feature resembles it */
    DM_T_STABLE,           /* matched |cos| across seeds at least: stable */
    DM_T_GAUSSIAN_KURTOSIS, /* |mean excess kurtosis| below: Gaussian (report's default) */
    DM_T_RECOVERED,        /* |cos| above: a planted atom is recovered */
    DM_T_COUNT
} dm_threshold_id;

extern const dm_threshold dm_thresholds[DM_T_COUNT];
#define DM_THRESHOLD(id) (dm_thresholds[(id)].value)

typedef enum {
    DM_VERDICT_GAUSSIAN_RESIDUAL,
    DM_VERDICT_NO_COMPARISON,
    DM_VERDICT_DARK_MATTER,
    DM_VERDICT_SAE_KNOWS,
    DM_VERDICT_MIXED,
} dm_verdict_kind;

/* The verdict's inputs. A vector with n = 0 is absent; NaN entries of
 * max_cos count as neither high nor low. */
typedef struct {
    double residual_kurtosis_mean; /* NaN: unknown */
    double source_kurtosis_mean;   /* read only when n_source_kurtosis > 0 */
    const double *max_cos;         /* per component: max |cos| with the SAE's decoder rows */
    int64_t n_max_cos;
    const double *stability;       /* per component: matched |cos| across seeds */
    int64_t n_stability;
    const double *source_kurtosis; /* per component: excess kurtosis of its source */
    int64_t n_source_kurtosis;
    double gaussian_kurtosis;      /* the report's parameter */
} dm_verdict_in;

typedef struct {
    dm_verdict_kind decision;
    int64_t high, low;    /* components above high_similarity, below low_similarity */
    int64_t novel, known; /* stable (and, for novel, non-Gaussian) low and high ones */
} dm_verdict;

void dm_verdict_decide(const dm_verdict_in *in, dm_verdict *out);
/* "gaussian_residual", ...: results.json's verdict.decision. */
const char *dm_verdict_name(dm_verdict_kind v);
/* One sentence for report.html and results.json's verdict.explanation. */
const char *dm_verdict_text(dm_verdict_kind v);

#endif
