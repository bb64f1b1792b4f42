/*
 * sae_desc.h: an SAE as it travels on a pipeline edge.
 *
 * One node reads an SAE's settings (sae_config: a SAELens folder's cfg.json)
 * or makes an SAE (planted_sae: the demo's), and hands them on as one tensor,
 * so the nodes that follow the SAE (text: context and BOS; gpt2: residual
 * centring; sae: the SAE itself) are connected to it in the DAG instead of
 * each re-reading the folder. The cache key chain then covers the SAE, and
 * `dmica plan` shows the edge.
 *
 * The tensor is u8, 1-D: a dm_sae_desc record, then weight_floats float32
 * values. It is checked on every read (magic, version, record size, total
 * size), so a tensor of another kind or an older layout is refused by name
 * rather than misread. The producer sets it already in infer() (it depends
 * only on the producer's parameters), so consumers read it from their own
 * infer() on, as op.h allows for such tensors.
 */
#ifndef DM_SAE_DESC_H
#define DM_SAE_DESC_H

#include <stdint.h>

#include "op.h"
#include "sae.h"

#define DM_SAE_DESC_MAGIC "dmsae\n"
#define DM_SAE_DESC_VERSION 1

typedef struct {
    char magic[8];                  /* DM_SAE_DESC_MAGIC, NUL padded */
    uint32_t version;               /* DM_SAE_DESC_VERSION */
    uint32_t record_bytes;          /* sizeof(dm_sae_desc) */
    int64_t d_in, d_sae;
    /* The model settings the SAE was trained with (cfg.json), -1 where not said. */
    int64_t context_size;           /* tokens per window */
    int32_t prepend_bos;            /* windows start with <|endoftext|> */
    int32_t center_writing_weights; /* residual hooks centred per token (TransformerLens) */
    /* 0: the weights are in the SAELens folder `dir`. Otherwise the record is
     * followed by a standard ReLU SAE without b_dec on the input, in this
     * order: W_enc (d_in, d_sae), W_dec (d_sae, d_in), b_enc (d_sae), b_dec
     * (d_in); `dir` then is the name it goes by in products. */
    int64_t weight_floats;
    char hook_name[128];            /* "" where not said */
    char dir[4096];
} dm_sae_desc;

/* Fills d from cfg (the folder dir's cfg.json); weight_floats 0. -1 with
 * dm_fail() if dir or the hook name do not fit the record. */
int dm_sae_desc_from_config(dm_sae_desc *d, const dm_sae_config *cfg, const char *dir);
/* The tensor of d followed by d->weight_floats floats from weights (NULL when 0). */
void dm_sae_desc_tensor(dm_tensor *t, const dm_sae_desc *d, const float *weights);
/* The record on tensor input `port` of n (an input named `sae`), checked, into
 * *out: 0 with *out NULL when the input is not connected; -1 with dm_fail()
 * naming the input when its tensor is not known before the run (its producer
 * is not an sae_config or planted_sae node) or is not a dm_sae_desc. */
int dm_sae_desc_input(const dm_node *n, int port, const dm_sae_desc **out);
/* The weights after the record (weight_floats of them). */
static inline const float *dm_sae_desc_weights(const dm_sae_desc *d)
{
    return (const float *)(const void *)((const char *)d + d->record_bytes);
}

#endif
