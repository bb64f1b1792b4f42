# The GPU backend (issue 13): on a machine with a GPU, tools/gpu-check's table
# (GPT-2 to layer 6 in FP32/TF32/BF16, the SAE, FastICA, the l6 pipeline on 1M
# tokens, each beside the same machine's CPU). Elsewhere the last check
# recorded on a GPU, docs/gpu-h200.md: GPU machines are lent only for minutes,
# so that file is kept by hand from gpu-check.md (gpu/README.md).
set -eu
dir=$(mktemp -d "${BENCH_DIR:-/tmp}/dmica-gpu.XXXXXX")
trap 'rm -rf "$dir"' EXIT
if nvidia-smi >/dev/null 2>&1 && OUT="$dir" tools/gpu-check >&2; then
    echo "## The GPU backend (issue 13): \`tools/gpu-check\` in \`make bench\`"
    echo
    tail -n +2 "$dir/gpu-check.md"
else
    cat docs/gpu-h200.md
fi
