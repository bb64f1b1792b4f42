#!/usr/bin/python3
"""gemma2_reference.py: regenerates tests/golden/gemma2/, the parity data of tests/test_gemma2.c.

The reference is Hugging Face transformers' own Gemma 2 (Gemma2ForCausalLM,
modeling_gemma2.py, tested with transformers 4.44.2, eager attention, float32 on
the CPU), not a re-implementation: for each small random config below this script

  - builds the model with random weights of the real structure: grouped-query
    attention with fewer key-value heads, head_dim != hidden_size / heads (as in
    Gemma-2-2B), a sliding window shorter than the windows of tokens, both
    soft-caps on and small enough that tanh bends the values (the script checks
    it), RMSNorm weights away from zero so that (1 + w) matters;
  - rounds every weight to bfloat16 first, so that the float32 and the bfloat16
    folders hold the same numbers and one set of expected values serves both;
  - saves it with save_pretrained as sharded safetensors with
    model.safetensors.index.json: NAME/ in float32, NAME-bf16/ in bfloat16;
  - runs it on random token windows and writes NAME/expected.safetensors
    (float32), TransformerLens hook names, each [B*T, width] with row b*T+t:
        tokens (I32 [B, T])
        hook_embed                 embed_tokens(ids) * sqrt(hidden_size)
        blocks.L.hook_resid_pre    the input of decoder layer L
        blocks.L.hook_attn_out     post_attention_layernorm's output (what the
                                   attention half adds to the residual stream)
        blocks.L.hook_resid_mid    the input of pre_feedforward_layernorm
        blocks.L.hook_mlp_out      post_feedforward_layernorm's output
        blocks.L.hook_resid_post   decoder layer L's output
        ln_final.hook_normalized   x * rsqrt(mean(x^2) + eps) of the final
                                   residual, without the norm's (1 + w)
        logits                     the model's logits, soft-capped
        loss                       per token next-token cross-entropy (float64
                                   from the logits), NaN at each window's end
    each taken by forward hooks on the modules (and output_hidden_states).

Run from the repository root with a Python that has torch and transformers:

    /work/venv/bin/python tools/gemma2_reference.py [--out tests/golden/gemma2]
"""
import argparse
import json
import os
import shutil

import numpy as np
import torch
from safetensors.numpy import save_file
from transformers import Gemma2Config, Gemma2ForCausalLM

# name: (config, windows B, tokens per window T, seed). head_dim differs from
# hidden_size / num_attention_heads in each; layers 0, 2, ... are the sliding
# ones in transformers 4.44 (Gemma2DecoderLayer.is_sliding = not layer_idx % 2).
MODELS = {
    "h32kv2": (dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                    max_position_embeddings=64, sliding_window=6, query_pre_attn_scalar=12,
                    attn_logit_softcapping=4.0, final_logit_softcapping=3.0, rope_theta=10000.0,
                    rms_norm_eps=1e-6), 2, 24, 1),
    # multi-query attention (one key-value head), an even number of layers, a
    # window of one token less than the context
    "h24kv1": (dict(vocab_size=64, hidden_size=24, intermediate_size=40, num_hidden_layers=4,
                    num_attention_heads=3, num_key_value_heads=1, head_dim=16,
                    max_position_embeddings=32, sliding_window=15, query_pre_attn_scalar=16,
                    attn_logit_softcapping=5.0, final_logit_softcapping=2.5, rope_theta=500.0,
                    rms_norm_eps=1e-5), 3, 16, 2),
}


def bf16_round(t):
    return t.to(torch.bfloat16).to(torch.float32)


def make_model(cfg, seed):
    torch.manual_seed(seed)
    config = Gemma2Config(**cfg, hidden_activation="gelu_pytorch_tanh", attention_bias=False,
                          tie_word_embeddings=True, attn_implementation="eager")
    # the Hub's Gemma 2 configs carry both names of the activation
    config.hidden_act = "gelu_pytorch_tanh"
    model = Gemma2ForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(torch.rand_like(p) - 0.5)  # (1 + w) in [0.5, 1.5)
            elif name == "model.embed_tokens.weight":
                p.copy_(torch.randn_like(p) * 0.5)
            else:  # nn.Linear (out, in)
                p.copy_(torch.randn_like(p) * (1.5 / p.shape[1] ** 0.5))
            p.copy_(bf16_round(p))
    return model


def run(model, tokens):
    """{hook: float32 [B*T, width]} of every hook."""
    acts, handles = {}, []
    B, T = tokens.shape

    def keep(name, tensor):
        acts[name] = tensor.detach().reshape(B * T, -1).to(torch.float32).numpy().copy()

    for L, layer in enumerate(model.model.layers):
        handles.append(layer.register_forward_hook(
            lambda m, i, o, L=L: keep(f"blocks.{L}.hook_resid_post", o[0])))
        handles.append(layer.post_attention_layernorm.register_forward_hook(
            lambda m, i, o, L=L: keep(f"blocks.{L}.hook_attn_out", o)))
        handles.append(layer.pre_feedforward_layernorm.register_forward_pre_hook(
            lambda m, i, L=L: keep(f"blocks.{L}.hook_resid_mid", i[0])))
        handles.append(layer.post_feedforward_layernorm.register_forward_hook(
            lambda m, i, o, L=L: keep(f"blocks.{L}.hook_mlp_out", o)))
    handles.append(model.model.norm.register_forward_pre_hook(
        lambda m, i: keep("ln_final.hook_normalized", m._norm(i[0].float()))))
    pre_cap = {}
    handles.append(model.lm_head.register_forward_hook(
        lambda m, i, o: pre_cap.__setitem__("logits", o.detach().numpy().copy())))
    with torch.no_grad():
        out = model(torch.from_numpy(tokens.astype(np.int64)), output_hidden_states=True)
    for h in handles:
        h.remove()
    hs = out.hidden_states  # [embeddings, after layer 0, ...]; the last is after model.norm
    keep("hook_embed", hs[0])
    for L in range(len(model.model.layers)):
        keep(f"blocks.{L}.hook_resid_pre", hs[L])
    keep("logits", out.logits)
    logits = out.logits.double().numpy().reshape(B * T, -1)
    lse = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
    flat = tokens.reshape(-1)
    loss = np.full((B * T, 1), np.nan)
    for bt in range(B * T):
        if bt % T != T - 1:
            loss[bt, 0] = lse[bt] - logits[bt, flat[bt + 1]]
    acts["loss"] = loss.astype(np.float32)
    return acts, pre_cap["logits"]


def save_sharded(model, path, dtype, shards):
    if os.path.exists(path):
        shutil.rmtree(path)
    m = model.to(dtype)
    total = sum(p.numel() * p.element_size() for p in m.parameters())
    m.save_pretrained(path, safe_serialization=True, max_shard_size=total // shards + 1)
    model.to(torch.float32)
    names = sorted(os.listdir(path))
    assert "model.safetensors.index.json" in names, names
    # the folder as a user's: config.json and the weights
    for n in names:
        if n == "generation_config.json":
            os.remove(os.path.join(path, n))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/golden/gemma2")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for name, (cfg, B, T, seed) in MODELS.items():
        assert cfg["sliding_window"] < T <= cfg["max_position_embeddings"]
        assert cfg["num_key_value_heads"] < cfg["num_attention_heads"]
        assert cfg["head_dim"] != cfg["hidden_size"] // cfg["num_attention_heads"]
        model = make_model(cfg, seed)
        rng = np.random.default_rng(seed)
        tokens = rng.integers(0, cfg["vocab_size"], size=(B, T)).astype(np.int32)
        acts, pre_cap = run(model, tokens)
        # the final soft-cap bends: some logits well beyond cap / 2
        cap = cfg["final_logit_softcapping"]
        assert np.abs(pre_cap).max() > cap, (name, np.abs(pre_cap).max())
        # and so does the attention's: without it the last residual moves
        model.config.attn_logit_softcapping = None
        uncapped, _ = run(model, tokens)
        model.config.attn_logit_softcapping = cfg["attn_logit_softcapping"]
        last = f"blocks.{cfg['num_hidden_layers'] - 1}.hook_resid_post"
        moved = np.abs(uncapped[last] - acts[last]).max() / np.abs(acts[last]).max()
        assert moved > 1e-2, (name, moved)
        save_sharded(model, os.path.join(args.out, name), torch.float32, 3)
        save_sharded(model, os.path.join(args.out, name + "-bf16"), torch.bfloat16, 2)
        tensors = {"tokens": tokens}
        tensors.update({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in acts.items()})
        save_file(tensors, os.path.join(args.out, name, "expected.safetensors"))
        print(f"{name}: {len(acts)} hooks, B={B} T={T}, max |logit| before the cap {np.abs(pre_cap).max():.2f} "
              f"(cap {cap}); the attention cap moves {last} by {moved:.2f} of its scale")


if __name__ == "__main__":
    main()
