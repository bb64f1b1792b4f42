#!/usr/bin/python3
"""make_gpt2_golden.py: regenerates tests/golden/gpt2/, the parity data of tests/test_gpt2.c.

For each tiny model below: tools/make-gpt2 writes the folder (config.json +
model.safetensors), random token windows go to tokens.npy, and the float64 numpy
reference (tools/gpt2_reference.py) writes expected.safetensors with every hook,
F32: "<hook>" centred as TransformerLens does (center_writing_weights) and
"raw/<hook>" without centring (same values for hooks outside the residual stream),
plus "tokens" (I32).

For the models in EDITS it also writes edit.safetensors, the parity data of the
editing hooks (dm_gpt2_run), raw values of every hook from blocks.L.hook_resid_pre
on, logits and loss included:
    "layer"              I32 [1], L
    "splice/given"       F32 [B*T, C], a tensor that replaces blocks.L.hook_resid_pre
                         (the model's own plus noise, as an SAE's reconstruction
                         would be); "splice/<hook>": blocks L.. run on it
    "ablate/direction"   F32 [C], u, unit length in float64 before rounding;
                         "ablate/<hook>": the run with x - (x . u) u per token at
                         blocks.L.hook_resid_pre
Run from the repository root:

    tests/golden/make_gpt2_golden.py
"""
import json
import os
import struct
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import gpt2_reference  # noqa: E402

# name, make-gpt2 arguments, token dtype in tokens.npy
MODELS = [
    # head size 16, F32, with the attn.bias / masked_bias buffers older files carry
    ("c64h4", ["--n-embd", "64", "--n-layer", "2", "--n-head", "4", "--n-positions", "32",
               "--vocab-size", "101", "--dtype", "F32", "--attn-bias", "--seed", "1"], "<i8"),
    # head size 12, BF16, names under "transformer."
    ("c48h4", ["--n-embd", "48", "--n-layer", "3", "--n-head", "4", "--n-positions", "24",
               "--vocab-size", "89", "--dtype", "BF16", "--prefix", "transformer.", "--seed", "2"], "<i4"),
    # head size 64 (GPT-2 small's), F16, n_inner set explicitly
    ("c64h1", ["--n-embd", "64", "--n-layer", "1", "--n-head", "1", "--n-positions", "20",
               "--vocab-size", "73", "--n-inner", "96", "--dtype", "F16", "--seed", "3"], "<u2"),
]
B, T = 2, 16
# models and the layer L whose resid_pre the edit tests replace
EDITS = [("c64h4", 1), ("c48h4", 1)]


def write_safetensors(path, tensors):
    """{name: (dtype string, numpy array)} -> a safetensors file."""
    header, blobs, off = {"__metadata__": {"format": "pt"}}, [], 0
    for name in sorted(tensors):
        dt, a = tensors[name]
        b = np.ascontiguousarray(a, dtype={"F32": "<f4", "I32": "<i4"}[dt]).tobytes()
        header[name] = {"dtype": dt, "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def main():
    for name, args, tok_dtype in MODELS:
        d = os.path.join(HERE, "gpt2", name)
        subprocess.run([os.path.join(ROOT, "tools", "make-gpt2"), *args, "--out", d], check=True)
        model = gpt2_reference.GPT2(d)
        rng = np.random.default_rng(100 + len(name) + int(args[args.index("--seed") + 1]))
        tokens = rng.integers(0, model.V, size=(B, T))
        tokens[:, 0] = model.V - 1  # BOS, as the activation store prepends it
        np.save(os.path.join(d, "tokens.npy"), tokens.astype(tok_dtype))
        acts = model.run(tokens)
        out = {"tokens": ("I32", tokens.astype(np.int32))}
        for hook, a in acts.items():
            out[hook] = ("F32", gpt2_reference.center(hook, a))
            out["raw/" + hook] = ("F32", a)
        write_safetensors(os.path.join(d, "expected.safetensors"), out)
        print("%s: %d hooks, tokens %s" % (d, len(acts), tokens.shape))
    for name, layer in EDITS:
        write_edits(os.path.join(HERE, "gpt2", name), layer)


def write_edits(d, layer):
    """edit.safetensors of model folder d (see the module comment)."""
    model = gpt2_reference.GPT2(d)
    tokens = np.load(os.path.join(d, "tokens.npy")).astype(np.int64)
    rng = np.random.default_rng(200 + layer + model.C)
    hook = "blocks.%d.hook_resid_pre" % layer
    resid = model.run(tokens)[hook]
    # float32 values, so that dmica and the reference start from the same numbers
    given = (0.8 * resid + rng.normal(0, 0.3 * resid.std(), resid.shape)).astype(np.float32)
    spliced = model.run(tokens, start=(layer, given.astype(np.float64)))
    # the same through an edit after the earlier blocks: the two modes agree
    check = model.run(tokens, edits={hook: lambda x: given.astype(np.float64)})
    for k, v in spliced.items():
        assert np.allclose(v, check[k], rtol=1e-12, atol=1e-12, equal_nan=True), k
    # the mean direction of the residual stream: removing it changes the loss clearly
    u = resid.mean(0)
    u = (u / np.linalg.norm(u)).astype(np.float32)
    u64 = u.astype(np.float64)
    ablated = model.run(tokens, edits={hook: lambda x: x - np.outer(x @ u64, u64)})
    out = {"layer": ("I32", np.array([layer], dtype=np.int32)),
           "splice/given": ("F32", given), "ablate/direction": ("F32", u)}
    for k, v in spliced.items():
        out["splice/" + k] = ("F32", v)
        out["ablate/" + k] = ("F32", ablated[k])
    write_safetensors(os.path.join(d, "edit.safetensors"), out)
    print("%s: edits at %s, %d hooks each" % (d, hook, len(spliced)))


if __name__ == "__main__":
    main()
