#!/bin/sh
# GPT-2 through the pipeline (text -> gpt2 -> npy_sink) to blocks.6.hook_resid_pre
# on the 124M shape (random weights from tools/make-gpt2), beside the OpenBLAS
# sgemm rate on the model's own GEMM shapes and PyTorch's CPU forward of the same
# six blocks (Debian's python3-torch), all measured in the same run; then the
# tokenizer's MB/s (`dmica tokenize`) against Hugging Face `tokenizers`.
# On a shared machine other jobs take cores at random moments, so sgemm, dmica
# and PyTorch are measured in ROUNDS interleaved rounds and each keeps its best
# (least disturbed) round. Markdown on stdout, progress on stderr. About 4
# minutes on 2 cores.
set -eu
: "${ROOT:=$(cd "$(dirname "$0")/../.." && pwd)}"
: "${DMICA:=$ROOT/bin/dmica}"
SYSPY=${PY:-/usr/bin/python3}          # numpy and torch (Debian: python3-numpy, python3-torch)
HFPY=$(command -v python3)             # pyenv python: tokenizers
THREADS=${BENCH_THREADS:-$(nproc)}
WINDOWS=${BENCH_WINDOWS:-128}           # windows of 128 tokens for the GPT-2 timing
ROUNDS=${BENCH_ROUNDS:-3}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/dmica-bench-gpt2.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"

echo "30-gpt2: making the 124M-shape model" >&2
$SYSPY "$ROOT/tools/make-gpt2" --seed 1 --out m124 >/dev/null
$SYSPY -c "
import numpy as np
np.save('tokens.npy', np.random.default_rng(0).integers(0, 50257, size=($WINDOWS, 128)).astype(np.int32))
np.save('one.npy', np.load('tokens.npy')[:1])"

# ---- sgemm on the model's GEMM shapes: M = B*T = 4096 rows of one batch times
# the weights of c_attn (768 x 2304), attn c_proj (768 x 768), mlp c_fc
# (768 x 3072) and mlp c_proj (3072 x 768): OpenBLAS's cblas_sgemm and dmica's
# dm_sgemm (packed weights; with and without Strassen) on exactly the products of
# one block (build/tools/sgemm-bench, tools/sgemm-bench.c).
SGEMM_BENCH=${SGEMM_BENCH:-$ROOT/build/tools/sgemm-bench}

# ---- GPT-2 through the pipeline; a 1-window run is timed too and subtracted,
# to leave out loading six blocks (about 0.35 GB of float32)
cat > p.yaml <<Y
name: bench-gpt2
nodes:
  src: {op: text, params: {path: tokens.npy, context: 128}}
  lm: {op: gpt2, inputs: {tokens: src}, params: {model: m124, hooks: blocks.6.hook_resid_pre, batch: 32}}
  acts: {op: npy_sink, inputs: {x: lm}, params: {file: acts.npy}}
Y
sed 's/tokens.npy/one.npy/' p.yaml > p1.yaml

# ---- PyTorch, the same six blocks
cat > torch_gpt2.py <<'P'
# The six blocks before blocks.6.hook_resid_pre in PyTorch, float32, as Hugging
# Face's GPT2Model computes them in eager mode (torch 1.13 has no fused
# scaled_dot_product_attention): scores of all T x T pairs, causal mask,
# softmax, @ V; then the TransformerLens centring dmica applies by default.
# Prints tokens/s of one pass over tokens.npy in batches of 32 windows (after a
# warm-up batch; loading is not timed), torch's version and its threads.
import json, struct, sys, time
import numpy as np, torch
torch.set_num_threads(int(sys.argv[1]))
raw = open("m124/model.safetensors", "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
hdr = json.loads(raw[8:8 + n])
def t(name):
    m = hdr[name]; b, e = m["data_offsets"]
    return torch.from_numpy(np.frombuffer(raw, np.float32, (e - b) // 4, 8 + n + b).reshape(m["shape"]).copy())
cfg = json.load(open("m124/config.json"))
C, H, eps = cfg["n_embd"], cfg["n_head"], cfg["layer_norm_epsilon"]
wte, wpe = t("wte.weight"), t("wpe.weight")
L = [{k: t(f"h.{i}.{k}") for k in ("ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias",
      "attn.c_proj.weight", "attn.c_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
      "mlp.c_proj.weight", "mlp.c_proj.bias")} for i in range(6)]
del raw
tok = torch.from_numpy(np.load("tokens.npy").astype(np.int64))
F = torch.nn.functional
def forward(ids):
    B, T = ids.shape
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    x = wte[ids] + wpe[:T]
    for p in L:
        h = F.layer_norm(x, (C,), p["ln_1.weight"], p["ln_1.bias"], eps).view(B * T, C)
        q, k, v = torch.addmm(p["attn.c_attn.bias"], h, p["attn.c_attn.weight"]).view(B, T, 3 * C).split(C, -1)
        q, k, v = (a.reshape(B, T, H, C // H).transpose(1, 2) for a in (q, k, v))
        s = (q @ k.transpose(-1, -2)) / (C // H) ** 0.5
        a = (s.masked_fill(~causal, float("-inf")).softmax(-1) @ v).transpose(1, 2).reshape(B * T, C)
        x = x + torch.addmm(p["attn.c_proj.bias"], a, p["attn.c_proj.weight"]).view(B, T, C)
        h = F.layer_norm(x, (C,), p["ln_2.weight"], p["ln_2.bias"], eps).view(B * T, C)
        h = F.gelu(torch.addmm(p["mlp.c_fc.bias"], h, p["mlp.c_fc.weight"]), approximate="tanh")
        x = x + torch.addmm(p["mlp.c_proj.bias"], h, p["mlp.c_proj.weight"]).view(B, T, C)
    return x - x.mean(-1, keepdim=True)
with torch.inference_mode():
    forward(tok[:32])
    t0 = time.perf_counter()
    for b in range(0, len(tok), 32):
        forward(tok[b:b + 32])
    dt = time.perf_counter() - t0
print("%.0f %s %d" % (tok.numel() / dt, torch.__version__, torch.get_num_threads()))
P
HAVE_TORCH=0
if $SYSPY -c "import torch" 2>/dev/null; then HAVE_TORCH=1; fi

: > sgemm.txt; : > classic.txt; : > fwd.txt; : > fwd-classic.txt; : > torch.txt
# Seconds of the forward pass: the pipeline on every window less the pipeline on
# one (loading the weights and packing them), appended to $1; the rest of the
# arguments are environment settings for both runs.
dmica_forward() {
    f=$1; shift
    rm -rf out out1 c0 c1
    t0=$(date +%s.%N)
    env "$@" $DMICA run p.yaml --threads "$THREADS" --memory 4G --cache c0 --out out >/dev/null 2>run.log || { cat run.log >&2; exit 1; }
    t1=$(date +%s.%N)
    env "$@" $DMICA run p1.yaml --threads "$THREADS" --memory 4G --cache c1 --out out1 >/dev/null 2>run1.log || { cat run1.log >&2; exit 1; }
    t2=$(date +%s.%N)
    awk "BEGIN { print ($t1 - $t0) - ($t2 - $t1) }" >> "$f"
}
r=0
while [ "$r" -lt "$ROUNDS" ]; do
    r=$((r + 1))
    echo "30-gpt2: round $r of $ROUNDS: sgemm, dmica ($WINDOWS windows of 128 tokens, then 1; with and without Strassen), PyTorch" >&2
    "$SGEMM_BENCH" "$THREADS" >> sgemm.txt 2>sgemm.err || { cat sgemm.err >&2; echo "0 0" >> sgemm.txt; }
    DMICA_SGEMM_CLASSIC=1 "$SGEMM_BENCH" "$THREADS" 2>/dev/null | cut -d' ' -f2 >> classic.txt || echo 0 >> classic.txt
    dmica_forward fwd.txt DMICA_SGEMM_CLASSIC=0
    dmica_forward fwd-classic.txt DMICA_SGEMM_CLASSIC=1
    if [ "$HAVE_TORCH" = 1 ]; then
        OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS OPENBLAS_NUM_THREADS=$THREADS \
            $SYSPY torch_gpt2.py "$THREADS" >> torch.txt
    fi
done
GFLOPS=$(cut -d' ' -f1 sgemm.txt | sort -gr | head -1)
DM_GFLOPS=$(cut -d' ' -f2 sgemm.txt | sort -gr | head -1)
DM_CLASSIC=$(sort -gr classic.txt | head -1)
read TOKS_S UTIL UTIL_DONE TOKS_CLASSIC <<EOF
$($SYSPY -c "
fwd, fwd_classic = max($(sort -g fwd.txt | head -1), 1e-9), max($(sort -g fwd-classic.txt | head -1), 1e-9)
tokens = ($WINDOWS - 1) * 128
# FLOP per token and block: 2 per multiply-add; 12 C^2 multiply-adds in the four
# matmuls (qkv 3 C^2, attn proj C^2, mlp c_fc 4 C^2, mlp c_proj 4 C^2) and (T+1) C
# in causal attention (QK^T and AV, each over (T+1)/2 keys on average)
C, T = 768, 128
flop = 2 * 6 * (12 * C * C + (T + 1) * C) * tokens
# what dmica's kernels do: one level of Strassen, 7/8 of the GEMMs' multiply-adds
done = 2 * 6 * (12 * C * C * 7 / 8 + (T + 1) * C) * tokens
print('%.0f %.0f %.0f %.0f' % (tokens / fwd, 100 * flop / fwd / 1e9 / $GFLOPS, 100 * done / fwd / 1e9 / $GFLOPS,
                              tokens / fwd_classic))")
EOF
TORCH_ROW="| PyTorch | not importable by $SYSPY (apt-get install python3-torch) |"
if [ "$HAVE_TORCH" = 1 ]; then
    read PT_TOKS PT_VER PT_THREADS <<EOF
$(sort -gr torch.txt | head -1)
EOF
    RATIO=$($SYSPY -c "print('%.2f' % ($TOKS_S / $PT_TOKS))")
    RATIO_CLASSIC=$($SYSPY -c "print('%.2f' % ($TOKS_CLASSIC / $PT_TOKS))")
    TORCH_ROW="| PyTorch $PT_VER CPU (Debian python3-torch, $PT_THREADS threads), same six blocks, B=32 T=128 | $PT_TOKS tokens/s |
| dmica / PyTorch tokens/s (target at least 1.5) | ${RATIO}x |
| the same without Strassen (DMICA_SGEMM_CLASSIC=1): dmica tokens/s, / PyTorch | $TOKS_CLASSIC tokens/s, ${RATIO_CLASSIC}x |"
fi
echo "30-gpt2: rounds: OpenBLAS and dm_sgemm GFLOP/s $(tr '\n' ' ' < sgemm.txt); dm_sgemm classic $(tr '\n' ' ' < classic.txt); dmica forward s $(tr '\n' ' ' < fwd.txt); without Strassen $(tr '\n' ' ' < fwd-classic.txt); torch $(cut -d' ' -f1 torch.txt | tr '\n' ' ')" >&2

# ---- numerics at the real shape: 4 windows through `dmica activations`, with
# and without Strassen, against the float64 numpy reference (tools/gpt2_reference.py)
echo "30-gpt2: parity on 4 windows against the float64 reference" >&2
$SYSPY -c "import numpy as np; np.save('t4.npy', np.load('tokens.npy')[:4])"
$DMICA activations --model m124 --hook blocks.6.hook_resid_pre --tokens t4.npy --out a.npy
DMICA_SGEMM_CLASSIC=1 $DMICA activations --model m124 --hook blocks.6.hook_resid_pre --tokens t4.npy --out a-classic.npy
$SYSPY "$ROOT/tools/gpt2_reference.py" --model m124 --tokens t4.npy --hook blocks.6.hook_resid_pre --out a-ref.npy
PARITY=$($SYSPY -c "
import numpy as np
r = np.load('a-ref.npy').astype(np.float64)
e = [np.abs(np.load(f).astype(np.float64) - r).max() / np.abs(r).max() for f in ('a.npy', 'a-classic.npy')]
print('%.1e / %.1e' % tuple(e))")

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

Command: \`sh tools/bench.d/30-gpt2.sh\` (part of \`make bench\`). \`tools/make-gpt2 --out m124\`
(random weights, the real shape), then \`dmica run p.yaml --threads $THREADS\` with \`text\` (a
[$WINDOWS, 128] int32 .npy) -> \`gpt2\` (hooks blocks.6.hook_resid_pre, batch 32, centred) -> \`npy_sink\`;
a 1-window run is subtracted to leave out loading (and packing) the weights, in each round. sgemm: OpenBLAS \`cblas_sgemm\` and dmica's
\`dm_sgemm\` (weights packed at load, one level of Strassen; operators/kernels/sgemm.c) on the four GEMMs of one block
at B*T = 4096 rows (4096x768 by 768x2304, 768x768 and 768x3072; 4096x3072 by 3072x768), 2MNK FLOP over
their time (\`build/tools/sgemm-bench $THREADS\`; dm_sgemm's rate is effective: Strassen does 7/8 of those
multiply-adds; \`DMICA_SGEMM_CLASSIC=1\` packs and multiplies without it). PyTorch: the same six blocks and centring under \`torch.inference_mode\`,
Hugging Face's eager attention, \`torch.set_num_threads($THREADS)\` and OMP/MKL/OPENBLAS_NUM_THREADS=$THREADS,
loading not timed. FLOP: 2 per multiply-add of the GEMMs (qkv, attention proj, MLP up and down: 12 C^2 per
token and block) and of causal attention (QK^T and AV over the (T+1)/2 keys a query sees on average:
(T+1) C), 86.1 MFLOP per token for the six blocks. $ROUNDS interleaved rounds of sgemm, dmica and PyTorch;
each keeps its best round (other jobs share this machine's cores).

| measure | value |
|---|---|
| OpenBLAS sgemm, the block's four GEMM shapes ($THREADS threads) | $GFLOPS GFLOP/s |
| dmica dm_sgemm, same shapes: Strassen (effective, 2MNK) / classic | $DM_GFLOPS / $DM_CLASSIC GFLOP/s |
| dmica GPT-2 through the pipeline, 6 blocks, B=32 T=128 | $TOKS_S tokens/s |
| FLOP utilisation: GEMM and causal attention FLOP/s (2MNK) over the OpenBLAS sgemm rate (target at least 75%) | $UTIL % |
| the same counting only the multiply-adds dmica does (Strassen: 7/8 of the GEMMs') | $UTIL_DONE % |
$TORCH_ROW
| max relative error (max abs / max abs) of blocks.6.hook_resid_pre on 4 windows vs the float64 numpy reference: Strassen / classic (tests allow 1e-4) | $PARITY |
| dmica tokenize, $MB MB of licences and changelogs (load and printing included) | $DM_MBS MB/s |
| Hugging Face tokenizers $($HFPY -c 'import tokenizers; print(tokenizers.__version__)' 2>/dev/null || echo '') (same vocab.json/merges.txt) | $HF |
EOF
