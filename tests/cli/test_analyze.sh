# dmica analyze on activations a user already has (here: the demo's planted
# activations and SAE, with random token windows for contexts), dmica top, and
# the commands' option checks.
. "$ROOT/tests/cli/lib.sh"
have_numpy || { echo "numpy missing"; exit 77; }
expect_ok $DMICA demo --out demo --quiet              # publishes its SAE as demo/planted-sae
cat > acts.yaml <<'Y'
nodes:
  atoms: {op: planted_sae, params: {d: 64, atoms: 96, missed: 16, seed: 1}}
  acts: {op: planted, inputs: {dictionary: atoms.dictionary}, params: {rows: 20000, l0: 2, seed: 1}}
  save: {op: npy_sink, inputs: {x: acts}, params: {file: acts.npy}}
Y
expect_ok $DMICA run acts.yaml --out a --quiet
python3 -c "
import numpy as np
np.save('tokens.npy', np.random.default_rng(0).integers(0, 50000, size=(400, 50)).astype(np.int32))
"
expect_ok $DMICA analyze --acts a/acts.npy --sae demo/planted-sae --tokens tokens.npy \
    --tokenizer "$ROOT/tests/data/gpt2-tokenizer" --components 24 --seeds 2 --top 5 --out run --quiet
for f in results.json report.html ica_directions.npy ica_filters.npy ica_sources.npy ica_activations.npy \
         ica_top_examples.json sae_stats.json run.json; do
    [ -s run/$f ] || fail "run/$f missing"
done
python3 - <<'P' || fail "analyze's results are wrong"
import json, numpy as np
r = json.load(open("run/results.json"))
assert r["tokens_analyzed"] == 20000 and r["n_ica_components"] == 24
assert np.load("run/ica_sources.npy").shape == (20000, 24)
top = json.load(open("run/ica_top_examples.json"))
e = top["components"][0]["top"][0]
w, p = divmod(e["row"], 50)
assert e["window"] == w and e["position"] == p and p != 0      # BOS positions left out
assert e["token_id"] == int(np.load("tokens.npy")[w, p])
# report.html: a card per component with its examples; without --rica nothing of RICA
h = open("run/report.html").read()
assert h.count('<div class="card"') == 24 and h.count("<h3>Component ") == 24
assert h.count("top (source value)") == 24 and h.count("top (activation projection") == 24
assert "RICA" not in h and "rica-cards" not in h
P
for f in rica_sae_similarity.svg rica_vs_sae_kurtosis.svg rica.json rica_top_examples.json; do
    [ ! -e run/$f ] || fail "run/$f without --rica"
done
expect_ok $DMICA top run --component 3 --k 4
[ "$(grep -c '\[\[' out.txt)" = 4 ] || { cat out.txt; fail "dmica top should print 4 examples with the token marked"; }
expect_ok $DMICA top run --component 3 --bottom
out_has "bottom"
expect_fail $DMICA top run --component 99
err_has "no component 99"
expect_fail $DMICA top nowhere --component 0
err_has "nowhere"
# windows that do not tile the activations are refused before any work
python3 -c "import numpy as np; np.save('bad.npy', np.zeros((7, 50), dtype=np.int32))"
expect_fail $DMICA analyze --acts a/acts.npy --sae demo/planted-sae --tokens bad.npy --components 4 --out x
err_has "bad.npy"; err_has "20000 rows"

# every option is checked before any work, and named in the message (exit 2)
usage_fails() { "$@" >out.txt 2>err.txt; [ $? -eq 2 ] || { cat err.txt; fail "expected a usage error (2): $*"; }; }
A="--acts a/acts.npy --sae demo/planted-sae --out x"
usage_fails $DMICA analyze $A --components 0;        err_has "dmica analyze: --components: must be from 1"
usage_fails $DMICA analyze $A --components 4x;       err_has "--components: must be an integer"
usage_fails $DMICA analyze $A --components 4 --tol nan;  err_has "--tol: must be a finite number"
usage_fails $DMICA analyze $A --components 4 --tol 0;    err_has "--tol: must be above 0"
usage_fails $DMICA analyze $A --components 4 --memory 12Q; err_has "--memory: invalid size '12Q'"
usage_fails $DMICA analyze $A --components 4 --seeds=0;  err_has "--seeds: must be from 1"
usage_fails $DMICA analyze $A --components 4 --frobnicate; err_has "unknown option --frobnicate"
usage_fails $DMICA analyze $A --components;          err_has "--components: needs a value"
usage_fails $DMICA analyze $A --components 4 --components 5; err_has "--components: given twice"
usage_fails $DMICA analyze $A --components 4 --quiet=yes; err_has "--quiet: takes no value"
usage_fails $DMICA analyze --sae demo/planted-sae --components 4 --out x; err_has "--acts ACTS.npy is required"
usage_fails $DMICA top run --component -1;           err_has "--component: must be from 0"
usage_fails $DMICA top run;                          err_has "--component N is required"
usage_fails $DMICA top --component 1;                err_has "RUN_DIR is required"
usage_fails $DMICA run;                              err_has "PIPELINE.yaml is required"
usage_fails $DMICA run a.yaml b.yaml;                err_has "one PIPELINE.yaml only"
usage_fails $DMICA demo --threads 0;                 err_has "--threads: must be from 1 to 4096"
usage_fails $DMICA sae --sae demo/planted-sae --in a/acts.npy --residual e.npy --tile 0; err_has "--tile: must be from 1 to 65536"
usage_fails $DMICA sae --sae demo/planted-sae --in a/acts.npy --residual e.npy --scaling-factor -1; err_has "--scaling-factor: must be above 0"
usage_fails $DMICA activations --model m --hook h --tokens t.npy --out o.npy --batch 0; err_has "--batch: must be from 1"
usage_fails $DMICA ica --in a/acts.npy --components 4 --out x --max-iter 1.5; err_has "--max-iter: must be an integer"
# --name=VALUE works like --name VALUE, and help comes from the same table
expect_ok $DMICA analyze --help; out_has "--components K"; out_has "[required]"
expect_ok $DMICA top run --component=3 --k=2
[ "$(grep -c '\[\[' out.txt)" = 2 ] || { cat out.txt; fail "--k=2 should print 2 examples"; }
# the demo's SAE, published by its planted_sae node, works with dmica sae
expect_ok $DMICA sae --sae demo/planted-sae --in a/acts.npy --residual e.npy --stats st.json --quiet
python3 -c "
import json; s = json.load(open('st.json')); assert s['tokens'] == 20000 and s['d_sae'] == 80, s" || fail "sae on the demo's SAE"
[ -z "$(ls -A | grep '^\.dmica-sae')" ] || fail "dmica sae left its temporary folder"
echo ok
