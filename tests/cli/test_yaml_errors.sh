# Malformed pipelines are refused before any work, with file:line.
. "$ROOT/tests/cli/lib.sh"

printf 'nodes:\n  a: {op: synthetic, params: {rows: 10, cols: 4}\n  b: [\n' > bad.yaml
expect_fail $DMICA run bad.yaml
err_has "bad.yaml:"; err_has "malformed YAML"

printf 'nodes:\n  a:\n    op: synthetik\n    params: {rows: 10, cols: 4}\n' > unknown_op.yaml
expect_fail $DMICA run unknown_op.yaml
err_has "unknown_op.yaml:3:"; err_has "unknown operator 'synthetik'"

printf 'nodes:\n  a:\n    op: synthetic\n    params: {rows: 10, cols: 4}\n    inptus: {x: a}\n' > unknown_key.yaml
expect_fail $DMICA run unknown_key.yaml
err_has "unknown_key.yaml:5:"; err_has "unknown key 'inptus'"

printf 'nodes:\n  a:\n    op: synthetic\n    params:\n      rows: 10\n      cols: 4\n      colour: red\n' > unknown_param.yaml
expect_fail $DMICA run unknown_param.yaml
err_has "unknown_param.yaml:7:"; err_has "unknown parameter 'colour'"

printf 'nodes:\n  a:\n    op: synthetic\n    params: {rows: ten, cols: 4}\n' > bad_int.yaml
expect_fail $DMICA run bad_int.yaml
err_has "bad_int.yaml:4:"; err_has "must be an integer"

printf 'nodes:\n  a:\n    op: synthetic\n    params: {cols: 4}\n' > missing_param.yaml
expect_fail $DMICA run missing_param.yaml
err_has "missing_param.yaml:2:"; err_has "needs parameter 'rows'"

printf 'nodes:\n  m:\n    op: moments\n' > missing_input.yaml
expect_fail $DMICA run missing_input.yaml
err_has "missing_input.yaml:2:"; err_has "missing input 'x'"

printf 'nodes:\n  m:\n    op: moments\n    inputs: {x: nowhere}\n' > dangling.yaml
expect_fail $DMICA run dangling.yaml
err_has "dangling.yaml:4:"; err_has "'nowhere', which does not exist"

# a cycle through two projections
cat > cycle.yaml <<'Y'
nodes:
  cov:
    op: covariance
    inputs: {x: p2}
  pca:
    op: pca
    inputs: {covariance: cov.covariance}
  p1:
    op: project
    inputs: {x: p2, matrix: pca.whitening}
  p2:
    op: project
    inputs: {x: p1, matrix: pca.whitening}
Y
expect_fail $DMICA run cycle.yaml
err_has "cycle.yaml:"; err_has "cycle:"

# a stream where a tensor is expected
cat > kind.yaml <<'Y'
nodes:
  src: {op: synthetic, params: {rows: 100, cols: 4}}
  pca:
    op: pca
    inputs: {covariance: src}
Y
expect_fail $DMICA run kind.yaml
err_has "kind.yaml:5:"; err_has "no output of that kind"

# shape mismatch between connected ports: an 8-wide whitening applied to 4 columns
cat > shape.yaml <<'Y'
nodes:
  wide: {op: synthetic, params: {rows: 100, cols: 8}}
  narrow: {op: synthetic, params: {rows: 100, cols: 4}}
  cov: {op: covariance, inputs: {x: wide}}
  pca: {op: pca, inputs: {covariance: cov.covariance}}
  z:
    op: project
    inputs: {x: narrow, matrix: pca.whitening}
Y
expect_fail $DMICA run shape.yaml
err_has "shape.yaml:6:"; err_has "do not match"

# --set of an unknown node or parameter
printf 'nodes:\n  a:\n    op: synthetic\n    params: {rows: 10, cols: 4}\n' > ok.yaml
expect_fail $DMICA run ok.yaml --set b.rows=5
err_has "no node named 'b'"
expect_fail $DMICA run ok.yaml --set a.colour=5
err_has "unknown parameter 'colour'"
expect_fail $DMICA run ok.yaml --set a.rows=many
err_has "must be an integer"

# Templates (docs/pipelines.md): errors name the file and line, and an error in
# one expansion says which value made it.
cat > tpl_unknown_var.yaml <<'Y'
templates:
  t:
    foreach: {i: [1, 2]}
    nodes:
      "src_${i}":
        op: synthetic
        params: {rows: 10, cols: "${j}"}
Y
expect_fail $DMICA plan tpl_unknown_var.yaml
err_has "tpl_unknown_var.yaml:7:"; err_has "unknown variable '\${j}'"; err_has "its variables: i"

printf 'templates:\n  t:\n    foreach: {i: [1]}\n    nodes:\n      "src_${i}": {op: synthetic, params: {rows: "${i", cols: 4}}\n' > tpl_unclosed.yaml
expect_fail $DMICA plan tpl_unclosed.yaml
err_has "tpl_unclosed.yaml:5:"; err_has "without a closing '}'"

printf 'templates:\n  t:\n    foreach: {}\n    nodes:\n      "src_${i}": {op: synthetic, params: {rows: 10, cols: 4}}\n' > tpl_empty.yaml
expect_fail $DMICA plan tpl_empty.yaml
err_has "tpl_empty.yaml:3:"; err_has "foreach is empty"

printf 'templates:\n  t:\n    foreach:\n      i: []\n    nodes:\n      "src_${i}": {op: synthetic, params: {rows: 10, cols: 4}}\n' > tpl_empty_list.yaml
expect_fail $DMICA plan tpl_empty_list.yaml
err_has "tpl_empty_list.yaml:4:"; err_has "'i' is an empty list"

printf 'templates:\n  t:\n    foreach: [1, 2]\n    nodes:\n      "src_${i}": {op: synthetic, params: {rows: 10, cols: 4}}\n' > tpl_malformed.yaml
expect_fail $DMICA plan tpl_malformed.yaml
err_has "tpl_malformed.yaml:3:"; err_has "holds {VAR: value} maps"

printf 'templates:\n  t:\n    foreach: 3\n    nodes:\n      "src_${i}": {op: synthetic, params: {rows: 10, cols: 4}}\n' > tpl_scalar.yaml
expect_fail $DMICA plan tpl_scalar.yaml
err_has "tpl_scalar.yaml:3:"; err_has "foreach must be"

printf 'templates:\n  t:\n    foreach:\n      - {i: 1, n: 10}\n      - {i: 2}\n    nodes:\n      "src_${i}": {op: synthetic, params: {rows: "${n}", cols: 4}}\n' > tpl_rows.yaml
expect_fail $DMICA plan tpl_rows.yaml
err_has "tpl_rows.yaml:5:"; err_has "lacks variable 'n'"

printf 'templates:\n  t:\n    foreach:\n      i: [1,\n          [2, 3]]\n    nodes:\n      "src_${i}": {op: synthetic, params: {rows: 10, cols: 4}}\n' > tpl_nested.yaml
expect_fail $DMICA plan tpl_nested.yaml
err_has "tpl_nested.yaml:5:"; err_has "must be plain values"

printf 'templates:\n  t:\n    foreach: {i: [1, 2]}\n    nodes: {}\n' > tpl_no_nodes.yaml
expect_fail $DMICA plan tpl_no_nodes.yaml
err_has "tpl_no_nodes.yaml:4:"; err_has "template 't' has no nodes"

printf 'templates:\n  t:\n    foreach: {i: [1, 2]}\n    nodes:\n      src: {op: synthetic, params: {rows: 10, cols: 4}}\n' > tpl_collide.yaml
expect_fail $DMICA plan tpl_collide.yaml
err_has "tpl_collide.yaml:5 (t i=2): node 'src' declared twice (first at line 5, for t i=1)"; err_has "name_\${VAR}"

cat > tpl_collide_node.yaml <<'Y'
nodes:
  src_2: {op: synthetic, params: {rows: 10, cols: 4}}
templates:
  t:
    foreach: {i: [1, 2]}
    nodes:
      "src_${i}": {op: synthetic, params: {rows: 10, cols: 4}}
Y
expect_fail $DMICA plan tpl_collide_node.yaml
err_has "tpl_collide_node.yaml:7 (t i=2): node 'src_2' declared twice (first at line 2)"

printf 'templates:\n  t:\n    foreach: {i: [1, a.b]}\n    nodes:\n      "src_${i}": {op: synthetic, params: {rows: 10, cols: 4}}\n' > tpl_dot.yaml
expect_fail $DMICA plan tpl_dot.yaml
err_has "tpl_dot.yaml:5 (t i=a.b):"; err_has "'src_a.b' is not a plain word"

# an error only one value makes: the graph's message names the line and the value
cat > tpl_value.yaml <<'Y'
templates:
  sizes:
    foreach:
      - {i: 1, n: 10}
      - {i: 2, n: ten}
    nodes:
      "src_${i}":
        op: synthetic
        params:
          rows: "${n}"
          cols: 4
Y
expect_fail $DMICA plan tpl_value.yaml
err_has "tpl_value.yaml:10 (sizes i=2, n=ten): node 'src_2'"; err_has "must be an integer"
expect_fail $DMICA plan tpl_value.yaml --set src_2.rows=many
err_has "must be an integer"
expect_ok $DMICA plan tpl_value.yaml --set src_2.rows=20
out_has "src_1"; out_has "src_2"

# duplicate keys at any level are errors naming both lines (libyaml keeps both; the
# first 'nodes:' block was dropped)
printf 'nodes:\n  a: {op: synthetic, params: {rows: 10, cols: 4}}\nnodes:\n  b: {op: synthetic, params: {rows: 10, cols: 4}}\n' > dup_top.yaml
expect_fail $DMICA plan dup_top.yaml
err_has "dup_top.yaml:3: key 'nodes' given twice (first at line 1)"
printf 'name: x\nmemory: 1G\nname: y\nnodes:\n  a: {op: synthetic, params: {rows: 10, cols: 4}}\n' > dup_name.yaml
expect_fail $DMICA plan dup_name.yaml
err_has "dup_name.yaml:3: key 'name' given twice (first at line 1)"
printf 'nodes:\n  a:\n    op: synthetic\n    params: {rows: 10, cols: 4}\n    op: moments\n' > dup_node_key.yaml
expect_fail $DMICA plan dup_node_key.yaml
err_has "dup_node_key.yaml:5: key 'op' given twice (first at line 3)"
printf 'templates:\n  t:\n    foreach: {i: [1]}\n    nodes:\n      "s_${i}": {op: synthetic, params: {rows: 10, cols: 4}}\n    foreach: {i: [2]}\n' > dup_tpl.yaml
expect_fail $DMICA plan dup_tpl.yaml
err_has "dup_tpl.yaml:6: key 'foreach' given twice (first at line 3)"
# a second document after '---' was ignored
printf 'nodes:\n  a: {op: synthetic, params: {rows: 10, cols: 4}}\n---\nnodes:\n  b: {op: nope}\n' > two_docs.yaml
expect_fail $DMICA plan two_docs.yaml
err_has "two_docs.yaml:3: a second YAML document"
printf -- '---\nnodes:\n  a: {op: synthetic, params: {rows: 10, cols: 4}}\n...\n' > one_doc.yaml
expect_ok $DMICA plan one_doc.yaml

# sizes say what is wrong and what a size is, never an empty message
for m in 0 nan inf 1e30 0.0001 -5 99999999999T 12Q; do
    expect_fail $DMICA run one_doc.yaml --memory "$m"
    [ $code -eq 2 ] || fail "--memory $m: exit $code, expected 2"
    grep -q -- "--memory: .*[a-z]" err.txt || { cat err.txt >&2; fail "--memory $m: no reason given"; }
done
expect_fail $DMICA run one_doc.yaml --memory 1e30
err_has "--memory: '1e30' is too large (at most 8 EiB)"; err_has "K, M, G, T (powers of 1024), e.g. 512M"
expect_fail $DMICA run one_doc.yaml --memory nan;    err_has "'nan' is not a number"
expect_fail $DMICA run one_doc.yaml --memory inf;    err_has "'inf' is too large"
expect_fail $DMICA run one_doc.yaml --memory 0.0001; err_has "'0.0001' is less than one byte"
expect_fail $DMICA run one_doc.yaml --memory 0;      err_has "--memory: must be at least 1 byte (a positive size such as 512M), not '0'"
printf 'memory: 99999999999T\nnodes:\n  a: {op: synthetic, params: {rows: 10, cols: 4}}\n' > mem_big.yaml
expect_fail $DMICA plan mem_big.yaml
err_has "mem_big.yaml:1: memory: '99999999999T' is too large (at most 8 EiB)"
printf 'memory: 0\nnodes:\n  a: {op: synthetic, params: {rows: 10, cols: 4}}\n' > mem_zero.yaml
expect_fail $DMICA plan mem_zero.yaml
err_has "mem_zero.yaml:1: memory must be at least 1 byte (a positive size such as 512M), not '0'"
printf 'nodes:\n  z: {op: synthetic, params: {rows: 10, cols: 4}}\n  ica:\n    op: fastica\n    inputs: {z: z}\n    params: {memory: inf}\n' > param_size.yaml
expect_fail $DMICA plan param_size.yaml
err_has "param_size.yaml:6:"; err_has "parameter 'memory': 'inf' is too large"

# an impossible thread count says it is the thread count (it failed as a memory budget)
expect_fail $DMICA run one_doc.yaml --threads 4096
[ $code -eq 2 ] || fail "--threads 4096: exit $code, expected 2"
err_has "--threads 4096 is more than 4 per core"
printf 'threads: 4096\nnodes:\n  a: {op: synthetic, params: {rows: 10, cols: 4}}\n' > many_threads.yaml
expect_fail $DMICA plan many_threads.yaml
err_has "many_threads.yaml: threads 4096 is more than 4 per core"
expect_fail $DMICA demo --out o --memory 64M --threads 2 --quiet
err_has "at 2 threads"; err_has "raise it with --memory, or use fewer --threads"

# a pipeline file over 16 MiB is refused before it is read; /dev/zero is not read forever
head -c 17000000 /dev/zero | tr '\0' ' ' > huge.yaml
expect_fail $DMICA plan huge.yaml
err_has "huge.yaml: 17000000 bytes is too large for a pipeline file (at most 16 MiB)"
expect_fail timeout 20 $DMICA plan /dev/zero
[ $code -ne 124 ] || fail "dmica plan /dev/zero ran on"
err_has "/dev/zero: more than 16 MiB, too large for a pipeline file"

# device: on a node (issue 13): a bad word names the node and its line; cuda
# without a GPU runs on the CPU after one warning, with the CPU's results;
# --device the same for the run
printf 'nodes:\n  a: {op: synthetic, params: {rows: 1000, cols: 4}}\n  m:\n    op: moments\n    inputs: {x: a}\n    device: gpu\n' > dev.yaml
expect_fail $DMICA plan dev.yaml
err_has "dev.yaml:6: node 'm': device must be cpu, cuda or auto, not 'gpu'"
expect_fail $DMICA demo --device gpu
err_has "--device: expected cpu, cuda or auto, not 'gpu'"
[ $code = 2 ] || fail "--device gpu: exit $code, expected 2"
expect_fail $DMICA demo --precision fp16
err_has "--precision: expected fp32, tf32 or bf16, not 'fp16'"
[ $code = 2 ] || fail "--precision fp16: exit $code, expected 2"
sed 's/device: gpu/device: cuda/' dev.yaml > devc.yaml
sed 's/device: gpu/device: cpu/' dev.yaml > devp.yaml
expect_ok $DMICA run devp.yaml --out cpu --cache dcpu
expect_ok $DMICA run devc.yaml --out cuda --cache dcuda
if ! grep -q "running on .* (CUDA)" err.txt; then   # no GPU here: the CPU, said once
    err_has "node 'm': device cuda: "; err_has "running on the CPU"
    cmp cpu/stats.json cuda/stats.json || fail "device cuda without a GPU should give the CPU's results"
    # --precision is the GPU's: on the CPU it changes nothing, not even the cache key
    expect_ok $DMICA plan devp.yaml --cache dcpu --precision bf16
    ! grep -q stale out.txt || fail "--precision on the CPU should keep the CPU's cache"
    expect_ok $DMICA run devp.yaml --out cpu2 --cache dcpu --precision bf16
    cmp cpu/stats.json cpu2/stats.json || fail "--precision on the CPU changed the results"
fi

expect_fail $DMICA run does-not-exist.yaml
err_has "does-not-exist.yaml"
[ ! -d .dmica-cache ] || [ -z "$(ls .dmica-cache/tmp 2>/dev/null)" ] || fail "work started on a bad pipeline"
echo ok
