# dmica export (docs/exports.md): the tiny-gpt2 run (GPT-2's tokenizer, token
# windows) and the demo (planted data, no windows) exported as jsonl (delphi's
# fields), Neuronpedia's export folders and prompt files, then read back by
# tools/check_exports.py as those tools read them: every documented field's
# presence and type, values equal to the sources at those tokens, maxValue =
# max(values) and its index, token strings equal to a plain Python byte-level
# decoding of tests/data/gpt2-tokenizer. Then a second decomposition
# (rica_*) is exported with no change to the command; a run that keeps no
# sources exports the same from the context values its topk node kept; and bad
# input: missing files named, an unknown format, truncated or mismatched files,
# values not kept, with nothing half-written and an earlier export left as it
# was.
. "$ROOT/tests/cli/lib.sh"
have_numpy || { echo "numpy missing (tools/make-gpt2)"; exit 77; }
CHECK="python3 $ROOT/tools/check_exports.py"
VOCAB=$ROOT/tests/data/gpt2-tokenizer/vocab.json
mkdir -p build/tiny tests/data
ln -s "$ROOT/tests/data/tiny-corpus" tests/data/tiny-corpus
python3 "$ROOT/tools/make-gpt2" --n-embd 32 --n-layer 2 --n-head 2 --n-positions 128 --vocab-size 50257 \
    --tokenizer "$ROOT/tests/data/gpt2-tokenizer" --seed 1 --out build/tiny/gpt2 >/dev/null || fail "make-gpt2"
python3 "$ROOT/tools/make-sae" --d-in 32 --d-sae 256 --l0 8 --input-scale 0.36 --hook blocks.1.hook_resid_pre \
    --seed 2 --out build/tiny/sae >/dev/null || fail "make-sae"
expect_ok $DMICA run "$ROOT/pipelines/tiny-gpt2.yaml" --out tiny --quiet --set causal.tokens=64 # (no causal study needed here)
expect_ok $DMICA demo --out demo --quiet

# -- exports, read back --------------------------------------------------------
for r in tiny demo; do
    expect_ok $DMICA export $r --format jsonl --prompts $r-prompts
    err_has "-> $r/components.jsonl"
    expect_ok $DMICA export $r --format neuronpedia --out $r-np --model-id gpt2-small
    v=""; [ $r = tiny ] && v="--vocab $VOCAB"
    $CHECK $r --jsonl $r/components.jsonl --neuronpedia $r-np --prompts $r-prompts $v >check.txt 2>&1 ||
        { cat check.txt; fail "$r: the exports do not read back"; }
    ls $r-np/*/activations/batch-0.jsonl.gz >/dev/null || fail "$r: no activations batch"
done
# the tiny run's source is layer 1's; its model id is the one given; tokens are GPT-2's text
[ -d tiny-np/1-dmica-ica ] || fail "neuronpedia source folder is not LAYER-SET-NAME: $(ls tiny-np)"
grep -q '"modelId":"gpt2-small"' tiny-np/1-dmica-ica/model.jsonl 2>/dev/null ||
    grep -q '"id":"gpt2-small"' tiny-np/1-dmica-ica/model.jsonl || fail "--model-id not used"
grep -q '"str_tokens":\[' tiny/components.jsonl || fail "no str_tokens"
grep -q '"<row ' demo/components.jsonl || fail "demo examples lack the row placeholders"
grep -q '<<' tiny-prompts/ica_0.txt || fail "prompts mark no token"

# the checker can fail: a token string, a value and maxValueTokenIndex changed
python3 - <<'P'
import json, gzip, shutil
lines = open("tiny/components.jsonl").read().splitlines()
l = json.loads(lines[3]); l["top"][0]["str_tokens"][0] += "x"; lines[3] = json.dumps(l)
open("bad1.jsonl", "w").write("\n".join(lines) + "\n")
lines = open("tiny/components.jsonl").read().splitlines()
l = json.loads(lines[5]); l["random"][1]["activations"][0] += 1e-3; lines[5] = json.dumps(l)
open("bad2.jsonl", "w").write("\n".join(lines) + "\n")
shutil.copytree("tiny-np", "bad-np")
p = "bad-np/1-dmica-ica/activations/batch-0.jsonl.gz"
acts = [json.loads(x) for x in gzip.open(p, "rt")]
acts[7]["maxValueTokenIndex"] = (acts[7]["maxValueTokenIndex"] + 1) % len(acts[7]["values"])
with gzip.open(p, "wt") as f:
    f.write("".join(json.dumps(a) + "\n" for a in acts))
P
for b in bad1 bad2; do
    $CHECK tiny --jsonl $b.jsonl --vocab $VOCAB >/dev/null 2>&1 && fail "the checker accepts $b.jsonl"
done
$CHECK tiny --neuronpedia bad-np --vocab $VOCAB >/dev/null 2>&1 && fail "the checker accepts a wrong maxValueTokenIndex"

# -- another decomposition: any NAME_top_examples.json with NAME_sources.npy ----
mkdir two && cp tiny/* two/ 2>/dev/null
cp two/ica_top_examples.json two/rica_top_examples.json
cp two/ica_sources.npy two/rica_sources.npy
expect_ok $DMICA export two --format jsonl
err_has "2 decompositions (ica: 16 components, rica: 16 components)"
expect_ok $DMICA export two --format neuronpedia
[ -d two/neuronpedia/1-dmica-rica ] || fail "no rica source folder: $(ls two/neuronpedia)"
$CHECK two --jsonl two/components.jsonl --neuronpedia two/neuronpedia --vocab $VOCAB >check.txt 2>&1 ||
    { cat check.txt; fail "two decompositions do not read back"; }

# -- bad input: clear messages, non-zero exit, nothing half-written ------------
expect_fail $DMICA export nowhere --format jsonl
err_has "nowhere"
expect_fail $DMICA export tiny --format csv
err_has "--format must be jsonl or neuronpedia, not 'csv'"
[ $code -eq 2 ] || fail "an unknown format is a usage error (exit 2), not $code"
expect_fail $DMICA export tiny
err_has "--format"
mkdir empty
expect_fail $DMICA export empty --format jsonl
err_has "no NAME_top_examples.json"

# a run that keeps no sources (the 100M-token pipeline's): the values come from
# the context values the topk node kept with each example, the same exports
mkdir nosrc && cp tiny/* nosrc/ 2>/dev/null; rm nosrc/ica_sources.npy nosrc/components.jsonl
expect_ok $DMICA export nosrc --format jsonl --prompts nosrc/prompts
expect_ok $DMICA export nosrc --format neuronpedia --model-id gpt2-small
cmp nosrc/components.jsonl tiny/components.jsonl || fail "exports from the kept context values differ"
diff -r nosrc/prompts tiny-prompts >/dev/null || fail "prompts from the kept context values differ"
for f in $(cd tiny-np && find . -name '*.gz'); do
    cmp -s tiny-np/$f nosrc/neuronpedia/$f ||
        fail "neuronpedia $f from the kept context values differs"
done
$CHECK nosrc --jsonl nosrc/components.jsonl --neuronpedia nosrc/neuronpedia --prompts nosrc/prompts \
    --vocab $VOCAB >check.txt 2>&1 || { cat check.txt; fail "the exports without sources do not read back"; }
# ... unless a value was not kept (shards that cut windows): named
python3 - <<'P'
import json
j = json.load(open("nosrc/ica_top_examples.json"))
j["components"][2]["bottom"][1]["context_values"][0] = None
json.dump(j, open("nosrc/ica_top_examples.json", "w"))
P
echo previous > nosrc/components.jsonl
rm -rf nosrc/prompts nosrc/neuronpedia
expect_fail $DMICA export nosrc --format jsonl --prompts nosrc/prompts
err_has "component 2, bottom example 1: the value at row"
err_has "nosrc/ica_sources.npy is missing"
[ "$(cat nosrc/components.jsonl)" = previous ] || fail "a failed export touched the earlier one"
[ ! -e nosrc/prompts ] || fail "a failed export left prompts"
expect_fail $DMICA export nosrc --format neuronpedia
[ ! -e nosrc/neuronpedia ] || fail "a failed export left a neuronpedia folder"
ls nosrc | grep -q tmp && fail "temporary files left: $(ls nosrc)"
# ... or the examples carry none (an older topk): the sources named
python3 - <<'P'
import json
j = json.load(open("tiny/ica_top_examples.json"))
for c in j["components"]:
    for e in c["top"] + c["bottom"] + c["random"]:
        del e["context_values"]
json.dump(j, open("nosrc/ica_top_examples.json", "w"))
P
expect_fail $DMICA export nosrc --format jsonl
err_has "nosrc/ica_sources.npy: missing, and nosrc/ica_top_examples.json keeps no context_values"
# kept context values that the sources contradict: not from the same run
mkdir ctxbad && cp tiny/* ctxbad/ 2>/dev/null && rm ctxbad/components.jsonl
python3 - <<'P'
import json
j = json.load(open("ctxbad/ica_top_examples.json"))
e = j["components"][4]["random"][0]
e["context_values"][-1] += 0.5
json.dump(j, open("ctxbad/ica_top_examples.json", "w"))
P
expect_fail $DMICA export ctxbad --format jsonl
err_has "component 4, random example 0: context value"
err_has "not from the same run"
[ ! -e ctxbad/components.jsonl ] || fail "a failed export left components.jsonl"

# a truncated top-examples file: named, with the line
mkdir trunc && cp tiny/* trunc/ 2>/dev/null
head -c 5000 tiny/ica_top_examples.json > trunc/ica_top_examples.json
expect_fail $DMICA export trunc --format neuronpedia
err_has "trunc/ica_top_examples.json: line"
[ ! -e trunc/neuronpedia ] || fail "a failed export left a neuronpedia folder"
ls trunc | grep -q tmp && fail "temporary files left: $(ls trunc)"

# sources from another run (the demo's: other rows, other columns): refused
mkdir mixed && cp tiny/* mixed/ 2>/dev/null && rm mixed/components.jsonl
cp demo/ica_sources.npy mixed/ica_sources.npy
expect_fail $DMICA export mixed --format jsonl
err_has "not from the same run"
# the same shape but other values: the examples' own values do not match
python3 - <<'P'
data = bytearray(open("tiny/ica_sources.npy", "rb").read())
for i in range(len(data) - 4 * 16 * 500, len(data)):  # the last 500 rows changed
    data[i] ^= 0x5a
data[-4 * 16 * 5000:] = bytes(4 * 16 * 5000)        # zeros over the last 5000 rows
open("mixed/ica_sources.npy", "wb").write(data)
P
expect_fail $DMICA export mixed --format jsonl
err_has "mixed/ica_sources.npy holds"
[ ! -e mixed/components.jsonl ] || fail "a failed export left components.jsonl"

# a tokenizer that is not there
expect_fail $DMICA export tiny --format jsonl --tokenizer nowhere-tok --out x.jsonl
err_has "the run's tokenizer (nowhere-tok; --tokenizer DIR to give another): nowhere-tok/vocab.json"
[ ! -e x.jsonl ] || fail "a failed export left x.jsonl"
echo ok
