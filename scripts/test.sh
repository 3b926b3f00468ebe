#!/bin/sh
# Run Starling's tests and end with one summary line: "N passed, N failed".
#
#   scripts/test.sh all          unit (plain + ASan/UBSan), fuzz corpus replay, integration
#   scripts/test.sh unit|fuzz|integration
#
# Each suite's own runner output (cmocka, libFuzzer, pytest) is shown as it
# runs; this script only adds up the counts.
set -u
cd "$(dirname "$0")/.."
what=${1:-all}
PY=/usr/bin/python3
passed=0
failed=0
log=$(mktemp)
trap 'rm -f "$log"' EXIT

# cmocka prints "[  PASSED  ] N test(s)." and "[  FAILED  ] N test(s), listed below:"
run_cmocka() {
    bin=$1
    echo "== $bin"
    if "$bin" >"$log" 2>&1; then rc=0; else rc=$?; fi
    cat "$log"
    p=$(sed -n 's/^\[  PASSED  \] \([0-9]*\) test.*/\1/p' "$log" | tail -1)
    f=$(sed -n 's/^\[  FAILED  \] \([0-9]*\) test.*/\1/p' "$log" | tail -1)
    p=${p:-0}
    f=${f:-0}
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi # crashed before its summary
    passed=$((passed + p))
    failed=$((failed + f))
}

unit() {
    for dir in build build-asan; do
        for t in $dir/tests/test_*; do
            [ -x "$t" ] || continue
            run_cmocka "$t"
        done
    done
}

# Every corpus file is one test case; libFuzzer runs them all and exits.
fuzz() {
    for f in build-fuzz/fuzz_*; do
        [ -x "$f" ] || continue
        n=$(basename "$f")
        dir=tests/fuzz/corpus/$n
        [ -d "$dir" ] || continue
        count=$(find "$dir" -type f | wc -l)
        echo "== $n: replaying $count corpus inputs"
        if "$f" -runs=0 "$dir" >"$log" 2>&1; then
            passed=$((passed + count))
            tail -2 "$log"
        else
            cat "$log"
            failed=$((failed + 1))
        fi
    done
}

run_pytest() {
    # shellcheck disable=SC2086
    if STARLING_BUILD=$1 $PY -m pytest -q -p no:cacheprovider ${2:-tests/integration} >"$log" 2>&1; then :; fi
    cat "$log"
    line=$(grep -E '[0-9]+ (passed|failed|error|skipped|deselected).* in [0-9.]+s' "$log" | tail -1)
    p=$(echo "$line" | grep -oE '[0-9]+ passed' | grep -oE '[0-9]+')
    f=$(echo "$line" | grep -oE '[0-9]+ failed' | grep -oE '[0-9]+')
    e=$(echo "$line" | grep -oE '[0-9]+ errors?' | grep -oE '[0-9]+')
    passed=$((passed + ${p:-0}))
    failed=$((failed + ${f:-0} + ${e:-0}))
    if [ -z "$line" ]; then failed=$((failed + 1)); fi
}

integration() {
    echo "== integration tests (build/)"
    run_pytest build
    # A part of the suite again against the ASan+UBSan daemon: the c2s paths
    # and the hostile-input cases, where memory errors would hide.
    if [ -x build-asan/starlingd ]; then
        echo "== integration tests (build-asan/: c2s, stream errors, SM, SASL2, presence, offline, PEP)"
        run_pytest build-asan "tests/integration/test_c2s_slixmpp.py tests/integration/test_stream_errors.py
            tests/integration/test_sm.py tests/integration/test_sasl2.py
            tests/integration/test_im_subscriptions.py tests/integration/test_im_presence.py
            tests/integration/test_offline.py tests/integration/test_pep.py"
    fi
}

case $what in
all) unit; fuzz; integration ;;
unit) unit ;;
fuzz) fuzz ;;
integration) integration ;;
*) echo "usage: $0 [all|unit|fuzz|integration]" >&2; exit 2 ;;
esac

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
