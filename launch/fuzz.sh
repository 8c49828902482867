#!/usr/bin/env bash
# Builds the libFuzzer targets of fuzz/ (clang, -fsanitize=fuzzer,address,undefined) into build-fuzz/ and runs
# each for a bounded time, starting from the committed seeds (fuzz/corpus/<target>/) and the inputs earlier
# runs found (build-fuzz/corpus/<target>/). docs/fuzzing.md describes the targets.
#
#   launch/fuzz.sh [seconds-per-target] [target...]      e.g. launch/fuzz.sh 300 dataset config
#
# Exit status: 0 every target ran its time without a finding; 1 a target crashed, leaked, hung (-timeout),
# ran out of memory (-rss_limit_mb), let a non-slearn exception escape or broke a property, or the build
# failed; 77 no clang with libFuzzer and std::source_location support was found (the ctest reports SKIPPED).
# Findings are kept in build-fuzz/artifacts/<target>/; rerun one with  build-fuzz/bin/fuzz_<target> FILE.
#
# Environment: SLEARN_FUZZ_CXX (the clang++ to use), SLEARN_FUZZ_JOBS (build jobs, default nproc),
# SLEARN_FUZZ_RSS_MB (default 2048), SLEARN_FUZZ_TIMEOUT (seconds for one input, default 10),
# SLEARN_FUZZ_WORKERS (fuzzing processes per target, default 1).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="$root/build-fuzz"
seconds="${1:-20}"
[ $# -gt 0 ] && shift
all_targets=(safetensors tokenizer dataset config judge)
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=("${all_targets[@]}")
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [ "$seconds" -lt 1 ]; then
  echo "fuzz: seconds per target must be a positive integer, got '$seconds'" >&2
  exit 2
fi
for target in "${targets[@]}"; do
  [ -f "$root/fuzz/targets/fuzz_$target.cpp" ] || { echo "fuzz: unknown target '$target' (known: ${all_targets[*]})" >&2; exit 2; }
done

# A clang++ that links libFuzzer with ASan and UBSan and compiles std::source_location (slearn::Error uses it;
# clang 14, Debian 12's default, cannot with libstdc++ 12, hence clang-16 in launch/setup.sh).
probe_dir="$(mktemp -d)"
trap 'rm -rf "$probe_dir"' EXIT
cat > "$probe_dir/probe.cpp" <<'EOF'
#include <cstddef>
#include <cstdint>
#include <source_location>
extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t*, std::size_t size) {
  return static_cast<int>(std::source_location::current().line() + size) * 0;
}
EOF
cxx=""
for candidate in ${SLEARN_FUZZ_CXX:-} clang++-16 clang++-19 clang++-18 clang++-17 clang++-15 clang++; do
  command -v "$candidate" >/dev/null 2>&1 || continue
  if "$candidate" -std=c++20 -fsanitize=fuzzer,address,undefined "$probe_dir/probe.cpp" -o "$probe_dir/probe" \
       >"$probe_dir/probe.log" 2>&1; then
    cxx="$(command -v "$candidate")"
    break
  fi
done
if [ -z "$cxx" ]; then
  echo "SKIPPED: no clang++ with libFuzzer (-fsanitize=fuzzer,address,undefined) and std::source_location;" \
       "install clang-16 and libclang-rt-16-dev (launch/setup.sh does)"
  exit 77
fi
cc="${cxx/clang++/clang}"

jobs="${SLEARN_FUZZ_JOBS:-$(nproc)}"
echo "fuzz: building with $cxx into $build"
cmake -S "$root/fuzz" -B "$build" -DCMAKE_CXX_COMPILER="$cxx" -DCMAKE_C_COMPILER="$cc" >"$probe_dir/configure.log" 2>&1 ||
  { cat "$probe_dir/configure.log"; echo "fuzz: FAILED to configure" >&2; exit 1; }
cmake --build "$build" -j "$jobs" -- --no-print-directory >"$probe_dir/build.log" 2>&1 ||
  { tail -n 60 "$probe_dir/build.log"; echo "fuzz: FAILED to build" >&2; exit 1; }

symbolizer="$(command -v llvm-symbolizer || true)"
[ -n "$symbolizer" ] && export ASAN_SYMBOLIZER_PATH="$symbolizer"
# Leaks are checked (libFuzzer's -detect_leaks, on by default); UBSan stops at its first report (the build
# has -fno-sanitize-recover=undefined) and prints the stack.
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1}"

rss_mb="${SLEARN_FUZZ_RSS_MB:-2048}"
input_timeout="${SLEARN_FUZZ_TIMEOUT:-10}"
workers="${SLEARN_FUZZ_WORKERS:-1}"
failed=()
for target in "${targets[@]}"; do
  corpus="$build/corpus/$target"
  artifacts="$build/artifacts/$target"
  log="$build/logs/$target.log"
  mkdir -p "$corpus" "$artifacts" "$(dirname "$log")"
  args=(-max_total_time="$seconds" -rss_limit_mb="$rss_mb" -timeout="$input_timeout" -print_final_stats=1
        -artifact_prefix="$artifacts/")
  [ -f "$root/fuzz/dict/$target.dict" ] && args+=(-dict="$root/fuzz/dict/$target.dict")
  [ "$workers" -gt 1 ] && args+=(-fork="$workers")
  status=0
  (cd "$build" && "$build/bin/fuzz_$target" "${args[@]}" "$corpus" "$root/fuzz/corpus/$target") >"$log" 2>&1 || status=$?
  runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)"
  speed="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)"
  if [ "$status" -eq 0 ]; then
    echo "fuzz: $target: ok, ${runs:-?} inputs in ${seconds}s (${speed:-?}/s)"
  else
    echo "fuzz: $target: FAILED (exit $status); the end of $log:"
    grep -v '^#[0-9]' "$log" | tail -n 60
    echo "fuzz: $target: the input is in $artifacts/; rerun it with $build/bin/fuzz_$target FILE"
    failed+=("$target")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: FAILED: ${failed[*]}"
  exit 1
fi
echo "fuzz: all ${#targets[@]} targets ran ${seconds}s each without a finding"
