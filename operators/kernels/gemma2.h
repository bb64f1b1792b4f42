/*
 * gemma2.h: Gemma 2, the second family of the model runner (model.h: the API,
 * the hooks, the backends), as Hugging Face transformers' modeling_gemma2.py
 * (4.44) computes it (Gemma Team, "Gemma 2: Improving Open Language Models at a
 * Practical Size", 2024), with TransformerLens's hook names.
 *
 * Gemma 2's pieces live in gemma2.c: config.json's Gemma2Config keys (values the
 * runner does not implement are refused by name), Gemma2ForCausalLM's tensors
 * (nn.Linear weights transposed at load, RMSNorm weights held as 1 + w), the
 * embedding times sqrt(hidden_size), the attention half (RMSNorm, q/k/v
 * projections, rotary embedding, grouped-query attention with query scaling
 * query_pre_attn_scalar^-1/2, attention-logit soft-capping, a sliding window on
 * the even layers, o_proj, the post-attention RMSNorm) and the MLP half
 * (RMSNorm, GeGLU with the tanh GELU, down_proj, the post-feed-forward
 * RMSNorm), the final RMSNorm, the tied unembedding and the final soft-cap.
 *
 * The plain reference kernels of the backend entries Gemma 2 brought (the "ref"
 * backend's loops), float32, BT = B*T rows, llm.c style.
 */
#ifndef DM_GEMMA2_H
#define DM_GEMMA2_H

#include "model.h"

/* out (BT, C) = inp / sqrt(mean(inp^2) + eps) * weight per row; weight (C) or
 * NULL; out may be inp. */
void gemma2_rmsnorm_forward_ref(float *out, const float *inp, const float *weight, int BT, int C,
                                float eps);
/* cs (T, hd) = cos then sin of t * inv_freq[i], i < hd/2, inv_freq[i] =
 * 1 / theta^(2i/hd), each step in float32 as Gemma2RotaryEmbedding computes it. */
void gemma2_rope_table(float *cs, int T, int hd, float theta);
/* x (B*T, NH*hd) rotated in place: each head's (x1, x2) halves become
 * (x1 cos - x2 sin, x2 cos + x1 sin) at the row's position (rotate_half). */
void gemma2_rope_forward_ref(float *x, const float *cs, int B, int T, int NH, int hd);
/* The backend entry attention_gqa's contract (model.h). */
void gemma2_attention_forward_ref(float *out, const float *q, const float *k, const float *v, int B,
                                  int T, int NH, int NKV, int hd, float scale, float softcap,
                                  int window);
/* gate (N) = gelu_new(gate) * up (N) */
void gemma2_geglu_forward_ref(float *gate, const float *up, int64_t N);
/* x (N) = cap tanh(x / cap) */
void gemma2_softcap_forward_ref(float *x, int64_t N, float cap);

#endif
