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

expect_fail $DMICA run does-not-exist.yaml
err_has "does-not-exist.yaml"
[ ! -d .dmica-cache ] || [ -z "$(ls .dmica-cache/tmp 2>/dev/null)" ] || fail "work started on a bad pipeline"
echo ok
