/*
 * gpt2.h: GPT-2, the first family of the model runner (model.h: the API, the
 * hooks, the backends). GPT-2's pieces live in gpt2.c: config.json's
 * GPT2Config keys, GPT2LMHeadModel's tensors, wte[token] + wpe[position], the
 * attention half (ln_1, c_attn, causal attention, c_proj) and the MLP half
 * (ln_2, c_fc, gelu_new, c_proj) of a block, ln_f and the tied unembedding.
 *
 * The plain reference kernels of the backend entries GPT-2 brought (the "ref"
 * backend's loops, with the shapes of the table's entries), float32, BT = B*T
 * rows, llm.c style: gpt2_<op>_forward_ref(out, ..., in, weights, dims).
 */
#ifndef DM_GPT2_H
#define DM_GPT2_H

#include "model.h"

/* out (BT, OC) = inp (BT, C) @ weight (C, OC) + bias (OC): the Conv1D layout, no
 * transpose; bias may be NULL. */
void gpt2_matmul_forward_ref(float *out, const float *inp, const float *weight, const float *bias,
                             int BT, int C, int OC);
void gpt2_layernorm_forward_ref(float *out, const float *inp, const float *weight,
                                const float *bias, int BT, int C, float eps);
void gpt2_attention_forward_ref(float *out, const float *qkv, int B, int T, int C, int NH);
/* out (N) = gelu_new(inp) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) */
void gpt2_gelu_forward_ref(float *out, const float *inp, int64_t N);
void gpt2_residual_forward_ref(float *x, const float *branch, size_t n);
void gpt2_unembed_forward_ref(float *out, const float *inp, const float *wte, int BT, int C, int V);
/* The same with wte (V, C) bf16 (DM_WEIGHTS_BF16): inp rounded to bf16 as
 * dm_bgemm rounds it, products summed in double (dm_bgemm_ref's convention;
 * the linear layers' bf16 reference is dm_bgemm_ref itself). */
void gpt2_unembed_bf16_forward_ref(float *out, const float *inp, const uint16_t *wte, int BT, int C,
                                   int V);

#endif
