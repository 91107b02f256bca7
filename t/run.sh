#!/bin/bash
# Runs every test layer against one build directory (make test passes build/san) and
# ends with the total line "N passed, N failed"; exits non-zero on any failure.
#   t/unit/         C unit tests (one binary per module), under ASan + UBSan
#   t/lua/          busted specs on LuaJIT, through liblunasip.so (with the sanitizer runtime)
#   t/integration/  the real binary on loopback, driven by SIPp and small Python clients
set -u
cd "$(dirname "$0")/.." || exit 1
build=${1:-build/san}
passed=0
failed=0
export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=0:detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

# Adds the "N passed, M failed" line of a layer's output; a layer that died without one
# counts as one failure.
tally() {
  local name=$1 out=$2 rc=$3 line p f
  line=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$out" | tail -n 1)
  if [ -z "$line" ]; then
    echo "  $name: no result line (exit $rc): counted as a failure"
    tail -n 30 "$out" | sed 's/^/    /'
    failed=$((failed + 1))
    return
  fi
  p=${line%% passed*}
  f=${line#*, }; f=${f%% failed*}
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
    echo "  $name: exited $rc with no failed check: counted as a failure"
    tail -n 30 "$out" | sed 's/^/    /'
    f=1
  fi
  passed=$((passed + p))
  failed=$((failed + f))
  echo "  $name: $line"
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "== unit (C, ASan+UBSan)"
for t in "$build"/t/test_*; do
  [ -x "$t" ] || continue
  n=$(basename "$t")
  "$t" t/data/torture > "$tmp/$n.out" 2>&1
  rc=$?
  grep -E '^FAIL|ERROR: AddressSanitizer|runtime error|LeakSanitizer' "$tmp/$n.out" | head -20 | sed 's/^/    /'
  tally "$n" "$tmp/$n.out" $rc
done

echo "== lua (busted, LuaJIT)"
asan_rt=$(gcc -print-file-name=libasan.so)
ubsan_rt=$(gcc -print-file-name=libubsan.so)
# The library path goes through LUA_PATH: busted --lua re-executes itself through sh, which
# would split an --lpath argument at its ';'.
LUA_PATH="$PWD/lua/?.lua;$PWD/lua/?/init.lua;;" LUNASIP_LIB="$PWD/$build/liblunasip.so" \
  LD_PRELOAD="$asan_rt $ubsan_rt" ASAN_OPTIONS=detect_leaks=0 \
  busted --lua=luajit -o TAP t/lua > "$tmp/busted.out" 2>&1
rc=$?
ok=$(grep -cE '^ok [0-9]+' "$tmp/busted.out")
nok=$(grep -cE '^not ok [0-9]+' "$tmp/busted.out")
grep -A8 -E '^not ok' "$tmp/busted.out" | head -60 | sed 's/^/    /'
echo "$ok passed, $nok failed" >> "$tmp/busted.out"
tally busted "$tmp/busted.out" $rc

echo "== integration (real binary on loopback)"
LUNASIP_BIN="$PWD/$build/lunasip" /usr/bin/python3 t/integration/run.py > "$tmp/integration.out" 2>&1
rc=$?
grep -E '^(not ok|  )' "$tmp/integration.out" | head -80 | sed 's/^/    /'
tally integration "$tmp/integration.out" $rc

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
