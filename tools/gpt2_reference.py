#!/usr/bin/python3
"""gpt2_reference.py: an independent float64 numpy GPT-2, for parity tests of dmica's runner.

Written from the GPT-2 paper and Hugging Face's modeling_gpt2.py, with
TransformerLens's hook names and centring (not from the C code): it reads a
Hugging Face model folder (config.json + model.safetensors, F32/F16/BF16) with its
own safetensors parser and returns TransformerLens hook activations, each as
[B*T, width] with row b*T+t:

    hook_embed, hook_pos_embed,
    blocks.L.hook_resid_pre, blocks.L.hook_attn_out, blocks.L.hook_resid_mid,
    blocks.L.hook_mlp_out, blocks.L.hook_resid_post,
    ln_final.hook_normalized  ((x - mean) / sqrt(var + eps), without ln_f's gain and
                               bias: TransformerLens folds those into the unembedding
                               by default, fold_ln=True),
    logits                    (ln_f(x) @ wte^T, [B*T, vocab]),
    loss                      (per token next-token cross-entropy, [B*T, 1]; NaN at
                               the last position of each window, which has no target).

With center (the default, TransformerLens's center_writing_weights) every hook that is
or writes into the residual stream has its per-token mean over d_model subtracted.

Edits, as TransformerLens's run_with_hooks with hooks that return a value: run(tokens,
edits={hook: f}) replaces a hook's activation by f(activation) and runs the rest of
the model on it; run(tokens, start=(L, resid_pre)) skips the embeddings and blocks
before L and runs blocks L.. on the given blocks.L.hook_resid_pre ([B*T, d_model]).

    tools/gpt2_reference.py --model DIR --tokens TOKENS.npy --hook blocks.1.hook_resid_pre \
        --out ACTS.npy [--no-center] [--layer L --resid-pre RESID.npy]
"""
import argparse
import json
import os
import struct

import numpy as np

RESIDUAL_HOOKS = ("hook_embed", "hook_pos_embed", "hook_resid_pre", "hook_resid_mid",
                  "hook_resid_post", "hook_attn_out", "hook_mlp_out")


def read_safetensors(path):
    """{name: float64 array} of every F32/F16/BF16 tensor, "transformer." stripped."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        b, end = e["data_offsets"]
        buf = data[b:end]
        if e["dtype"] == "F32":
            a = np.frombuffer(buf, "<f4").astype(np.float64)
        elif e["dtype"] == "F16":
            a = np.frombuffer(buf, "<f2").astype(np.float64)
        elif e["dtype"] == "BF16":
            a = (np.frombuffer(buf, "<u2").astype(np.uint32) << 16).view(np.float32).astype(np.float64)
        else:
            continue
        if name.startswith("transformer."):
            name = name[len("transformer."):]
        out[name] = a.reshape(e["shape"])
    return out


class GPT2:
    def __init__(self, folder):
        with open(os.path.join(folder, "config.json")) as f:
            cfg = json.load(f)
        self.C = cfg["n_embd"]
        self.L = cfg["n_layer"]
        self.H = cfg["n_head"]
        self.eps = cfg["layer_norm_epsilon"]
        self.V = cfg["vocab_size"]
        assert cfg["activation_function"] == "gelu_new"
        self.w = read_safetensors(os.path.join(folder, "model.safetensors"))

    @staticmethod
    def layer_norm(x, g, b, eps):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + eps) * g + b

    @staticmethod
    def gelu_new(x):
        return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))

    def attention(self, x, p):
        """x [B, T, C] (already ln_1'd) -> attention output before c_proj, [B, T, C]."""
        B, T, C = x.shape
        H, hs = self.H, C // self.H
        qkv = x @ self.w[p + "attn.c_attn.weight"] + self.w[p + "attn.c_attn.bias"]
        q, k, v = qkv[..., :C], qkv[..., C:2 * C], qkv[..., 2 * C:]
        heads = lambda a: a.reshape(B, T, H, hs).transpose(0, 2, 1, 3)  # [B, H, T, hs]
        q, k, v = heads(q), heads(k), heads(v)
        scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(hs)
        future = np.triu(np.ones((T, T), dtype=bool), 1)
        scores = np.where(future, -np.inf, scores)
        scores = scores - scores.max(-1, keepdims=True)
        p_att = np.exp(scores)
        p_att /= p_att.sum(-1, keepdims=True)
        z = p_att @ v  # [B, H, T, hs]
        return z.transpose(0, 2, 1, 3).reshape(B, T, C)

    def run(self, tokens, edits=None, start=None):
        """tokens int [B, T] -> {hook: raw float64 [B*T, width]} for every hook computed.

        edits: {hook: f}; f maps the hook's [B*T, width] activation to the one the
        rest of the model runs on (and that is returned for the hook).
        start: (L, resid_pre [B*T, C]): blocks L.. run on resid_pre; the hooks
        before blocks.L.hook_resid_pre are not computed.
        """
        w = self.w
        edits = edits or {}
        B, T = tokens.shape
        acts = {}
        rows = lambda a: a.reshape(B * T, -1).copy()

        def hook(name, a):
            if name in edits:
                a = np.asarray(edits[name](rows(a)), dtype=np.float64).reshape(a.shape)
            acts[name] = rows(a)
            return a

        first = 0
        if start is None:
            embed = hook("hook_embed", w["wte.weight"][tokens])
            pos = hook("hook_pos_embed", np.broadcast_to(w["wpe.weight"][:T], embed.shape))
            x = embed + pos
        else:
            first, x = start[0], np.asarray(start[1], dtype=np.float64).reshape(B, T, self.C)
        for i in range(first, self.L):
            p = "h.%d." % i
            x = hook("blocks.%d.hook_resid_pre" % i, x)
            z = self.attention(self.layer_norm(x, w[p + "ln_1.weight"], w[p + "ln_1.bias"], self.eps), p)
            a = hook("blocks.%d.hook_attn_out" % i, z @ w[p + "attn.c_proj.weight"] + w[p + "attn.c_proj.bias"])
            x = hook("blocks.%d.hook_resid_mid" % i, x + a)
            h = self.layer_norm(x, w[p + "ln_2.weight"], w[p + "ln_2.bias"], self.eps)
            h = self.gelu_new(h @ w[p + "mlp.c_fc.weight"] + w[p + "mlp.c_fc.bias"])
            m = hook("blocks.%d.hook_mlp_out" % i, h @ w[p + "mlp.c_proj.weight"] + w[p + "mlp.c_proj.bias"])
            x = hook("blocks.%d.hook_resid_post" % i, x + m)
        normalized = hook("ln_final.hook_normalized", self.layer_norm(x, 1.0, 0.0, self.eps))
        logits = (normalized * w["ln_f.weight"] + w["ln_f.bias"]) @ w["wte.weight"].T  # [B, T, V]
        acts["logits"] = rows(logits)
        m = logits.max(-1, keepdims=True)
        lse = (m + np.log(np.exp(logits - m).sum(-1, keepdims=True)))[..., 0]
        loss = np.full((B, T), np.nan)
        for b in range(B):
            for t in range(T - 1):
                loss[b, t] = lse[b, t] - logits[b, t, tokens[b, t + 1]]
        acts["loss"] = loss.reshape(B * T, 1)
        return acts


def is_residual(hook):
    return any(hook.endswith(h) for h in RESIDUAL_HOOKS)


def center(hook, a):
    """TransformerLens center_writing_weights: residual hooks lose their per-token mean."""
    return a - a.mean(-1, keepdims=True) if is_residual(hook) else a


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--tokens", required=True, help="integer .npy [B, T]")
    p.add_argument("--hook", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--no-center", action="store_true")
    p.add_argument("--layer", type=int, help="with --resid-pre: the block it enters")
    p.add_argument("--resid-pre", help=".npy [B*T, d_model]: run blocks LAYER.. on it")
    a = p.parse_args()
    if (a.layer is None) != (a.resid_pre is None):
        raise SystemExit("gpt2_reference.py: --layer and --resid-pre go together")
    tokens = np.load(a.tokens).astype(np.int64)
    start = None if a.layer is None else (a.layer, np.load(a.resid_pre))
    acts = GPT2(a.model).run(tokens, start=start)
    if a.hook not in acts:
        raise SystemExit("gpt2_reference.py: unknown hook %s" % a.hook)
    out = acts[a.hook] if a.no_center else center(a.hook, acts[a.hook])
    np.save(a.out, out.astype(np.float32))


if __name__ == "__main__":
    main()
