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

expect_fail $DMICA run does-not-exist.yaml
err_has "does-not-exist.yaml"
[ ! -d .dmica-cache ] || [ -z "$(ls .dmica-cache/tmp 2>/dev/null)" ] || fail "work started on a bad pipeline"
echo ok
