#!/usr/bin/env bash
# Builds every fuzz target and runs each for SECONDS (default 20), one after the other:
#
#   bash fuzz/run.sh [SECONDS] [TARGET...]
#
# Each run starts from the committed seeds in fuzz/corpus/TARGET and grows its own corpus in
# fuzz/corpus-run/TARGET (git-ignored), so the seeds stay small. A crash, a timeout (an input
# taking over 30 s) or running out of memory fails the run: libFuzzer's input is then in
# fuzz/artifacts/TARGET/, and the script exits 1 once every target has run. Logs go to
# fuzz/artifacts/logs/. Without a nightly toolchain or cargo-fuzz it says so and exits 0.
set -uo pipefail

seconds=${1:-20}
[[ $# -gt 0 ]] && shift
if ! [[ $seconds =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 [SECONDS] [TARGET...]" >&2
  exit 2
fi
fuzz_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$fuzz_dir/.."

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz/run.sh: no nightly toolchain (rustup toolchain install nightly); not fuzzing"
  exit 0
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz/run.sh: cargo-fuzz is not installed (cargo install cargo-fuzz --locked); not fuzzing"
  exit 0
fi

if [[ $# -gt 0 ]]; then
  targets=("$@")
else
  targets=()
  for f in "$fuzz_dir"/fuzz_targets/*.rs; do
    targets+=("$(basename "$f" .rs)")
  done
fi

echo "== building ${#targets[@]} fuzz targets"
if ! cargo +nightly fuzz build --fuzz-dir "$fuzz_dir"; then
  echo "fuzz/run.sh: the fuzz targets do not build" >&2
  exit 1
fi

mkdir -p "$fuzz_dir/artifacts/logs"
failed=()
for target in "${targets[@]}"; do
  mkdir -p "$fuzz_dir/corpus-run/$target" "$fuzz_dir/corpus/$target"
  log="$fuzz_dir/artifacts/logs/$target.log"
  echo "== $target: ${seconds}s"
  cargo +nightly fuzz run --fuzz-dir "$fuzz_dir" "$target" \
    "$fuzz_dir/corpus-run/$target" "$fuzz_dir/corpus/$target" \
    -- -max_total_time="$seconds" -timeout=30 -print_final_stats=1 >"$log" 2>&1
  status=$?
  # libFuzzer's last progress line: runs, coverage (cov, ft), corpus, exec/s.
  grep -E '^#[0-9]+' "$log" | tail -n 1
  if [[ $status -ne 0 ]]; then
    failed+=("$target")
    echo "!! $target failed (exit $status); the end of $log:"
    grep -E 'panicked at|ERROR: libFuzzer|SUMMARY|Test unit written to|Base64:' "$log" | tail -n 12
  fi
done

if [[ ${#failed[@]} -gt 0 ]]; then
  echo "fuzz/run.sh: ${failed[*]} failed; inputs in fuzz/artifacts/, replay one with:"
  echo "  cargo +nightly fuzz run TARGET fuzz/artifacts/TARGET/crash-..."
  exit 1
fi
echo "fuzz/run.sh: ${#targets[@]} targets ran ${seconds}s each without a failure"
