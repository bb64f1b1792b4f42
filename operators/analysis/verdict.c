/*
 * verdict.c: the thresholds table and the verdict (verdict.h).
 */
#include "verdict.h"

#include <math.h>

const dm_threshold dm_thresholds[DM_T_COUNT] = {
    [DM_T_HIGH_SIMILARITY] = {"high_similarity", 0.8,
                              "max |cos| with some SAE decoder row above this: the SAE knows the direction",
                              "the research plan's similarity bands (docs/analysis.md)"},
    [DM_T_LOW_SIMILARITY] = {"low_similarity", 0.3,
                             "max |cos| with every SAE decoder row below this: no SAE feature resembles it",
                             "the research plan's similarity bands (docs/analysis.md)"},
    [DM_T_STABLE] = {"stable", 0.9,
                     "a component whose matched |cos| across FastICA seeds is at least this is stable",
                     "fastica's `stable` default (operators/adapters/op_fastica.c)"},
    [DM_T_GAUSSIAN_KURTOSIS] = {"gaussian_kurtosis", 0.5,
                                "|mean excess kurtosis| below this counts as Gaussian",
                                "the report's `gaussian_kurtosis` default (operators/adapters/op_report.c)"},
    [DM_T_RECOVERED] = {"recovered", 0.9,
                        "a planted atom with |cos| above this to some ICA pattern is recovered",
                        "the demo's planted data (operators/adapters/op_planted.c)"},
};

void dm_verdict_decide(const dm_verdict_in *in, dm_verdict *out)
{
    double hi = DM_THRESHOLD(DM_T_HIGH_SIMILARITY), lo = DM_THRESHOLD(DM_T_LOW_SIMILARITY),
           stable_at = DM_THRESHOLD(DM_T_STABLE), gk = in->gaussian_kurtosis;
    out->high = out->low = out->novel = out->known = 0;
    for (int64_t i = 0; i < in->n_max_cos; i++) {
        double c = in->max_cos[i];
        int stable = !in->n_stability || (i < in->n_stability && in->stability[i] >= stable_at);
        int nongauss = !in->n_source_kurtosis || (i < in->n_source_kurtosis && fabs(in->source_kurtosis[i]) > gk);
        out->high += c > hi;
        out->low += c < lo;
        out->novel += c < lo && stable && nongauss;
        out->known += c > hi && stable;
    }
    double r = in->residual_kurtosis_mean;
    if (isfinite(r) && fabs(r) < gk && (!in->n_source_kurtosis || fabs(in->source_kurtosis_mean) < gk))
        out->decision = DM_VERDICT_GAUSSIAN_RESIDUAL;
    else if (!in->n_max_cos)
        out->decision = DM_VERDICT_NO_COMPARISON;
    else if (out->novel > 0 && out->novel >= out->known)
        out->decision = DM_VERDICT_DARK_MATTER;
    else if (2 * out->known > in->n_max_cos)
        out->decision = DM_VERDICT_SAE_KNOWS;
    else
        out->decision = DM_VERDICT_MIXED;
}

const char *dm_verdict_name(dm_verdict_kind v)
{
    switch (v) {
    case DM_VERDICT_GAUSSIAN_RESIDUAL: return "gaussian_residual";
    case DM_VERDICT_NO_COMPARISON: return "non_gaussian_no_comparison";
    case DM_VERDICT_DARK_MATTER: return "dark_matter_features";
    case DM_VERDICT_SAE_KNOWS: return "sae_knows";
    case DM_VERDICT_MIXED: return "mixed";
    }
    return "unknown";
}

const char *dm_verdict_text(dm_verdict_kind v)
{
    switch (v) {
    case DM_VERDICT_GAUSSIAN_RESIDUAL:
        return "The residual is close to Gaussian: the SAE captures essentially all the non-Gaussian structure, "
               "and the dark matter looks like noise.";
    case DM_VERDICT_DARK_MATTER:
        return "ICA finds stable, non-Gaussian directions in the residual that no SAE feature resembles: "
               "candidate dark-matter features.";
    case DM_VERDICT_SAE_KNOWS:
        return "Most ICA directions of the residual are close to SAE decoder rows: the SAE knows these "
               "directions but does not reconstruct them well (a training issue rather than missing features).";
    case DM_VERDICT_MIXED:
        return "The residual is non-Gaussian, and its ICA directions partly overlap SAE features: rotated or "
               "mixed versions of known features beside some new ones.";
    case DM_VERDICT_NO_COMPARISON: break;
    }
    return "The residual is non-Gaussian; run ICA with an SAE decoder to compare directions.";
}
