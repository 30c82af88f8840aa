#!/usr/bin/env bash
# Runs every input under regressions/<target>/ once through its fuzz target
# and says which still violate a property. Exit 1 if any does.
# Usage: fuzz/check-regressions.sh [target...]   (default: every target with a folder)
set -u
cd "$(dirname "$0")"
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=($(ls regressions))
for t in "${targets[@]}"; do RUSTC_BOOTSTRAP=1 cargo fuzz build "$t" 2>/dev/null || exit 2; done
bin=target/x86_64-unknown-linux-gnu/release
fails=0
for t in "${targets[@]}"; do
  for f in regressions/"$t"/*; do
    if out=$(ASAN_OPTIONS=detect_odr_violation=0 "$bin/$t" "$f" 2>&1); then
      echo "ok    $f"
    else
      fails=$((fails + 1))
      echo "FAIL  $f"
      grep -A1 'panicked at' <<<"$out" | tail -1 | cut -c1-300 | sed 's/^/      /'
    fi
  done
done
echo "$fails failing"
[ "$fails" -eq 0 ]
