#!/usr/bin/env bash
# Run the fuzz targets in fuzz/ (cargo-fuzz, libFuzzer) one after the other, FUZZ_SECONDS each;
# see docs/fuzzing.md. Usage: scripts/fuzz.sh [target...] (default: every target).
# Environment: FUZZ_SECONDS (default 60), FUZZ_SANITIZER (address, the default, or none).
# Exits non-zero when a target finds a crash, a timeout or an out-of-memory input (the input
# is in fuzz/artifacts/<target>/, the fuzzer's log in fuzz/artifacts/<target>.log).
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_FUZZ_VERSION=0.13.2
seconds=${FUZZ_SECONDS:-60}
sanitizer=${FUZZ_SANITIZER:-address}
# cargo-fuzz passes unstable rustc flags (-Zsanitizer, coverage passes); the stable toolchain
# accepts them with RUSTC_BOOTSTRAP=1, so no nightly toolchain is needed.
export RUSTC_BOOTSTRAP=1

if [[ "$(cargo fuzz --version 2>/dev/null || true)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]]; then
  echo "fuzz: installing cargo-fuzz $CARGO_FUZZ_VERSION"
  cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi

targets=("$@")
if ((${#targets[@]} == 0)); then
  mapfile -t targets < <(cargo fuzz list --fuzz-dir fuzz)
fi
if ((${#targets[@]} == 1)); then
  cargo fuzz build --fuzz-dir fuzz --sanitizer "$sanitizer" "${targets[0]}"
else
  cargo fuzz build --fuzz-dir fuzz --sanitizer "$sanitizer"
fi

failed=()
for target in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$target" "fuzz/artifacts"
  log="fuzz/artifacts/$target.log"
  dict=()
  [[ -f "fuzz/dicts/$target.dict" ]] && dict=(-dict="fuzz/dicts/$target.dict")
  # New inputs go to fuzz/corpus/<target> (not committed); fuzz/seeds/<target> is read only.
  if cargo fuzz run --fuzz-dir fuzz --sanitizer "$sanitizer" "$target" \
    "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
    -max_total_time="$seconds" -timeout=20 -print_final_stats=1 "${dict[@]}" >"$log" 2>&1; then
    runs=$(grep -Eo 'Done [0-9]+ runs in [0-9]+ second' "$log" | tail -n 1 | cut -d' ' -f2)
    corpus=$(find "fuzz/corpus/$target" -type f | wc -l)
    echo "fuzz: $target: ok, ${runs:-?} executions in ${seconds}s, corpus $corpus inputs"
  else
    echo "fuzz: $target: FAILED (log: $log)"
    grep -E 'panicked|ERROR|SUMMARY|Test unit written|Base64' "$log" | head -n 20 || tail -n 40 "$log"
    failed+=("$target")
  fi
done
if ((${#failed[@]})); then
  echo "fuzz: failed: ${failed[*]}; reproduce with: RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir fuzz <target> fuzz/artifacts/<target>/<input>"
  exit 1
fi
