# Helpers for the command-line tests (sourced). Each test runs in an empty folder.
set -u
fail() { echo "FAIL: $*" >&2; exit 1; }
# expect_fail CMD...: the command must exit non-zero; its stderr is in err.txt.
expect_fail() {
    "$@" >out.txt 2>err.txt
    code=$?
    [ $code -ne 0 ] || { cat err.txt >&2; fail "expected failure: $*"; }
    [ $code -lt 128 ] || { cat err.txt >&2; fail "crashed (signal $((code - 128))): $*"; }
    return 0
}
# expect_ok CMD...: the command must succeed.
expect_ok() { "$@" >out.txt 2>err.txt || { cat err.txt >&2; fail "command failed: $*"; }; }
# err_has TEXT: stderr of the last command mentions TEXT.
err_has() { grep -qF -- "$1" err.txt || { echo "--- stderr:" >&2; cat err.txt >&2; fail "stderr lacks '$1'"; }; }
out_has() { grep -qF -- "$1" out.txt || { echo "--- stdout:" >&2; cat out.txt >&2; fail "stdout lacks '$1'"; }; }
# the system python (Debian's numpy, scipy); a pyenv python3 first on PATH may lack them
PY=python3; [ -x /usr/bin/python3 ] && PY=/usr/bin/python3
python3() { "$PY" "$@"; }
have_numpy() { python3 -c "import numpy, scipy" 2>/dev/null; }
# The cache holds only complete entries: no temporary folder is left, and every
# entry has its node.json.
cache_consistent() {
    c=${1:-.dmica-cache}
    [ -d "$c" ] || return 0
    if [ -d "$c/tmp" ] && [ -n "$(ls -A "$c/tmp")" ]; then fail "temporary files left in $c/tmp: $(ls "$c/tmp")"; fi
    for e in "$c"/*; do
        case "$(basename "$e")" in tmp|index|filehash) continue ;; esac
        [ -f "$e/node.json" ] || fail "cache entry $e has no node.json"
    done
}
