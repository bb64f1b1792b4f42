#!/bin/sh
# GPT-2 through the pipeline (text -> gpt2 -> npy_sink) to blocks.6.hook_resid_pre
# on the 124M shape (random weights from tools/make-gpt2), beside the OpenBLAS
# sgemm rate of the MLP's shape measured in the same run, and PyTorch's forward
# of the same six blocks where PyTorch is installed; then the tokenizer's MB/s
# (`dmica tokenize`) against Hugging Face `tokenizers` on the same text.
# Markdown on stdout, progress on stderr. Under 5 minutes on 2 cores.
set -eu
: "${ROOT:=$(cd "$(dirname "$0")/../.." && pwd)}"
: "${DMICA:=$ROOT/bin/dmica}"
SYSPY=/usr/bin/python3                 # numpy (Debian)
HFPY=$(command -v python3)             # pyenv python: tokenizers (and torch, if installed)
THREADS=${BENCH_THREADS:-$(nproc)}
WINDOWS=${BENCH_WINDOWS:-128}           # windows of 128 tokens for the GPT-2 timing
tmp=$(mktemp -d "${TMPDIR:-/tmp}/dmica-bench-gpt2.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"

echo "30-gpt2: making the 124M-shape model" >&2
$SYSPY "$ROOT/tools/make-gpt2" --seed 1 --out m124 >/dev/null
$SYSPY -c "
import numpy as np
np.save('tokens.npy', np.random.default_rng(0).integers(0, 50257, size=($WINDOWS, 128)).astype(np.int32))"

# ---- sgemm: the c_fc product of one batch, (32*128 x 768) @ (768 x 3072)
cat > sgemm.c <<'C'
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }
int main(int argc, char **argv)
{
    int M = 4096, K = 768, N = 3072, reps = 0;
    openblas_set_num_threads(atoi(argv[1]));
    float *a = malloc(sizeof(float) * M * K), *b = malloc(sizeof(float) * K * N), *c = malloc(sizeof(float) * M * N);
    for (long i = 0; i < (long)M * K; i++) a[i] = (float)(i % 7) * 0.1f;
    for (long i = 0; i < (long)K * N; i++) b[i] = (float)(i % 5) * 0.1f;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1, a, K, b, N, 0, c, N);
    double t0 = now();
    while (now() - t0 < 3.0 || reps < 3) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1, a, K, b, N, 0, c, N);
        reps++;
    }
    printf("%.1f\n", 2.0 * M * N * K * reps / (now() - t0) / 1e9);
    return 0;
}
C
cc -O2 -o sgemm sgemm.c -lopenblas
echo "30-gpt2: sgemm" >&2
GFLOPS=$(./sgemm "$THREADS")

# ---- GPT-2 through the pipeline
cat > p.yaml <<Y
name: bench-gpt2
nodes:
  src: {op: text, params: {path: tokens.npy, context: 128}}
  lm: {op: gpt2, inputs: {tokens: src}, params: {model: m124, hooks: blocks.6.hook_resid_pre, batch: 32}}
  acts: {op: npy_sink, inputs: {x: lm}, params: {file: acts.npy}}
Y
echo "30-gpt2: GPT-2 forward, $WINDOWS windows of 128 tokens" >&2
t0=$(date +%s.%N)
$DMICA run p.yaml --threads "$THREADS" --memory 4G --out out >/dev/null 2>run.log || { cat run.log >&2; exit 1; }
t1=$(date +%s.%N)
# the run includes loading six blocks (about 0.35 GB of float32): time a
# 1-window run too and take the difference as the forward time
$SYSPY -c "import numpy as np; np.save('one.npy', np.load('tokens.npy')[:1])"
sed 's/tokens.npy/one.npy/' p.yaml > p1.yaml
t2=$(date +%s.%N)
$DMICA run p1.yaml --threads "$THREADS" --memory 4G --cache c1 --out out1 >/dev/null 2>run1.log || { cat run1.log >&2; exit 1; }
t3=$(date +%s.%N)
read TOKS_S UTIL <<EOF
$($SYSPY -c "
run, one = $t1 - $t0, $t3 - $t2
tokens = ($WINDOWS - 1) * 128
fwd = max(run - one, 1e-9)
# per token and block, multiply-adds: 12 C^2 in the four matmuls (qkv 3, proj 1, fc 4, fc-proj 4)
# and (T+1) C in causal attention (QK^T and AV over (T+1)/2 keys on average); a FLOP is half a MAC
C, T = 768, 128
flop = 2 * 6 * (12 * C * C + (T + 1) * C) * tokens
print('%.0f %.0f' % (tokens / fwd, 100 * flop / fwd / 1e9 / $GFLOPS))")
EOF

# ---- PyTorch, the same six blocks (float32, same threads), when installed
TORCH="PyTorch: not importable by $HFPY, so no comparison (pip install torch needs download.pytorch.org for the CPU wheel, or the NVIDIA libraries for the PyPI build)"
if $HFPY -c "import torch" 2>/dev/null; then
    echo "30-gpt2: PyTorch forward" >&2
    TORCH=$($HFPY - "$THREADS" <<'P'
import json, sys, time, struct
import numpy as np, torch
torch.set_num_threads(int(sys.argv[1]))
raw = open("m124/model.safetensors", "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
hdr = json.loads(raw[8:8 + n])
def t(name):
    m = hdr[name]; b, e = m["data_offsets"]
    return torch.from_numpy(np.frombuffer(raw, np.float32, (e - b) // 4, 8 + n + b).reshape(m["shape"]).copy())
C, H = 768, 12
wte, wpe = t("wte.weight"), t("wpe.weight")
L = [{k: t(f"h.{i}.{k}") for k in ("ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias",
      "attn.c_proj.weight", "attn.c_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
      "mlp.c_proj.weight", "mlp.c_proj.bias")} for i in range(6)]
tok = torch.from_numpy(np.load("tokens.npy").astype(np.int64))
def forward(ids):
    B, T = ids.shape
    x = wte[ids] + wpe[:T]
    for p in L:
        h = torch.nn.functional.layer_norm(x, (C,), p["ln_1.weight"], p["ln_1.bias"], 1e-5)
        q, k, v = (h @ p["attn.c_attn.weight"] + p["attn.c_attn.bias"]).split(C, -1)
        q, k, v = (a.view(B, T, H, C // H).transpose(1, 2) for a in (q, k, v))
        a = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + a.transpose(1, 2).reshape(B, T, C) @ p["attn.c_proj.weight"] + p["attn.c_proj.bias"]
        h = torch.nn.functional.layer_norm(x, (C,), p["ln_2.weight"], p["ln_2.bias"], 1e-5)
        h = torch.nn.functional.gelu(h @ p["mlp.c_fc.weight"] + p["mlp.c_fc.bias"], approximate="tanh")
        x = x + h @ p["mlp.c_proj.weight"] + p["mlp.c_proj.bias"]
    return x - x.mean(-1, keepdim=True)
with torch.inference_mode():
    forward(tok[:32])
    t0 = time.perf_counter()
    for b in range(0, len(tok), 32):
        forward(tok[b:b + 32])
    dt = time.perf_counter() - t0
print("%.0f tokens/s (torch %s, %d threads)" % (tok.numel() / dt, torch.__version__, torch.get_num_threads()))
P
)
    TORCH="PyTorch (same six blocks, inference_mode, SDPA attention): $TORCH"
fi

# ---- tokenizer: a few MB of English prose and changelogs from /usr/share/doc
echo "30-gpt2: tokenizer" >&2
$SYSPY - <<'P'
import glob, gzip, os
out, size = open("text.txt", "wb"), 0
files = sorted(glob.glob("/usr/share/common-licenses/*")) + sorted(glob.glob("/usr/share/doc/*/changelog*.gz")) \
    + sorted(glob.glob("/usr/share/doc/*/copyright"))
for f in files:
    if size > 4 << 20 or os.path.isdir(f):
        continue
    try:
        b = gzip.open(f).read() if f.endswith(".gz") else open(f, "rb").read()
    except OSError:
        continue
    out.write(b); size += len(b)
while size < 4 << 20:   # a small /usr/share/doc: repeat what there is
    b = open("text.txt", "rb").read(); out.write(b); size += len(b)
P
MB=$($SYSPY -c "import os; print('%.2f' % (os.path.getsize('text.txt') / 1e6))")
t0=$(date +%s.%N)
$DMICA tokenize --tokenizer "$ROOT/tests/data/gpt2-tokenizer" text.txt > ids.txt
t1=$(date +%s.%N)
DM_MBS=$($SYSPY -c "print('%.2f' % ($MB / ($t1 - $t0)))")
HF=$($HFPY - "$ROOT/tests/data/gpt2-tokenizer" <<'P' 2>/dev/null || echo "n/a (tokenizers not importable)"
import sys, time
from tokenizers import Tokenizer, models, pre_tokenizers, decoders
from tokenizers import AddedToken
d = sys.argv[1]
tk = Tokenizer(models.BPE.from_file(d + "/vocab.json", d + "/merges.txt"))
tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tk.add_special_tokens([AddedToken("<|endoftext|>", special=True)])
text = open("text.txt", "rb").read().decode("utf-8", "replace")
t0 = time.perf_counter()
ids = tk.encode(text).ids
dt = time.perf_counter() - t0
same = ids == [int(x) for x in open("ids.txt").read().split()]
lines = text.splitlines(keepends=True)
t0 = time.perf_counter()
tk.encode_batch(lines)
dt2 = time.perf_counter() - t0
print("%.2f MB/s in one encode call on the whole text (ids %s); %.2f MB/s with encode_batch over its lines "
      "(all threads)" % (len(text.encode()) / dt / 1e6, "identical" if same else "DIFFER", len(text.encode()) / dt2 / 1e6))
P
)

cat <<EOF
## GPT-2 124M shape: tokens/s to blocks.6.hook_resid_pre, and the tokenizer

Commands: \`tools/make-gpt2 --out m124\` (random weights, the real shape), then
\`dmica run p.yaml --threads $THREADS\` with \`text\` (a [$WINDOWS, 128] int32 .npy) -> \`gpt2\`
(hooks blocks.6.hook_resid_pre, batch 32, centred) -> \`npy_sink\`; a 1-window run is subtracted to
leave out loading the weights. sgemm: OpenBLAS \`cblas_sgemm\` 4096x768 @ 768x3072 (the MLP's c_fc of one
batch), same threads, same run.

| measure | value |
|---|---|
| OpenBLAS sgemm ($THREADS threads) | $GFLOPS GFLOP/s |
| dmica GPT-2, 6 blocks, B=32 T=128 | $TOKS_S tokens/s |
| FLOP utilisation (matmul + attention FLOP / sgemm rate) | $UTIL % |
| $TORCH | |
| dmica tokenize, $MB MB of licences and changelogs (load and printing included) | $DM_MBS MB/s |
| Hugging Face tokenizers $($HFPY -c 'import tokenizers; print(tokenizers.__version__)' 2>/dev/null || echo '') (same vocab.json/merges.txt) | $HF |
EOF
