#!/usr/bin/env bash
# perf/gpu/check.sh: the one-command device check (issue 11; docs/cuda.md says when and how to run it). In at most
# 8 minutes on one H200: the GPU tests under SLEARN_EXPECT_GPU=1, compute-sanitizer memcheck and racecheck over
# the op tests, the GPU benchmarks (decode, generation, a LoRA training step) beside their PyTorch peers on the
# same GPU in the same command, and the embedded demo on the cpu and cuda backends compared; then report.md and
# report.json (perf/gpu/report.py) in the out folder.
#
#   perf/gpu/check.sh --bundle DIR --out DIR [options]    the unpacked bundle of launch/gpu-bundle.sh
#   perf/gpu/check.sh --bin build/bin --out DIR [options] a build tree instead
#   perf/gpu/check.sh --dry-run [--bin DIR]               here, without a GPU: finds the script's own bugs
#
#   --bundle DIR   programs in DIR/bin, each run through DIR/run (which sets up the bundle's libraries)
#   --bin DIR      folder of slearn_gpu_tests, bench_gpu_ops, bench_gpu_decode, bench_gpu_train, slearn_dist
#                  (default: build/bin; inside an unpacked bundle, slearn-gpu/perf/gpu/check.sh, the bundle
#                  itself as with --bundle)
#   --prefix CMD   run every program as CMD PROGRAM ARGS (default: DIR/run with --bundle, nothing with --bin);
#                  CMD must run its arguments (exec "$@") after setting up the environment
#   --out DIR      report.md, report.json, results.jsonl, steps.log, gpu_tests.json
#                  (default: runs/gpu-check, git-ignored)
#   --python PY    the peers' and the report's python (default: python3); peer-train-7b also needs peft
#   --budget S     the whole run's limit in seconds (default 480); each step's timeout is clamped to what is left
#   --steps LIST   only these steps (comma-separated names from the table), e.g. to redo the ones that failed
#   --copy-gbs X   the copy bandwidth for the decode floors when the ops step is not run (GB/s, read + write)
#   --keep-work    keep the work folder (logs of every step, raw results) and say where it is
#   --dry-run      CPU stand-ins where there are (the benches on the CPU backend at a tiny shape, the GPU tests
#                  expecting skips without SLEARN_EXPECT_GPU), the GPU commands' exact arguments validated by
#                  their own --dry-run, everything else "dry-run: skipped (needs a GPU)"; the report is written
#
# Step budget on one H200 (seconds: each is that step's timeout; guesses until the first run, then calibrate
# here). The sum is 480, the whole of --budget; a step that ends early leaves its time unused, a step that
# hangs is killed at its timeout, and whatever it printed so far is kept.
#   step                   timeout  what
#   env                        10   nvidia-smi, driver, torch/transformers/peft, compute-sanitizer, ldd of the programs
#   gpu-tests                  80   SLEARN_EXPECT_GPU=1 slearn_gpu_tests (gtest JSON)
#   memcheck                   25   compute-sanitizer memcheck over the op tests (test_filter says which)
#   racecheck                  20   compute-sanitizer racecheck over the kernels with shared memory and barriers
#   ops                        15   bench_gpu_ops: copy bandwidth (first: the decode floors need it), GEMMs, attention
#   ops-peer                   20   torch copy, torch.matmul and scaled_dot_product_attention at the same shapes
#   decode-0.5b                15   bench_gpu_decode qwen2.5-0.5b, batch 1, 128 in, 256 out
#   decode-7b                  15   bench_gpu_decode qwen2.5-7b, batch 1, 128 in, 256 out (15 GB of weights)
#   generate-7b-64             20   bench_gpu_decode qwen2.5-7b, 64 sequences of 256 in / 256 out
#   generate-7b-256            30   bench_gpu_decode qwen2.5-7b, 256 sequences of 256 in / 256 out
#   train-7b                   20   bench_gpu_train: a LoRA step (r 64, all seven projections) at the 7B shape cut to
#                                   8 of its 28 layers (to fit the budget), 8 x 512 tokens; tok/s and MFU
#   peer-train-7b              30   peer_train.py: the same step with transformers + PEFT (bf16 autocast, AdamW)
#   demo-gpu-vs-cpu            30   demo_gpu_vs_cpu.sh: configs/demo.yaml on cpu and on cuda side by side (--parallel),
#                                   the same wrong answers selected and accuracy after within 1 point; needs the
#                                   checkout's demo/ and configs/ (the bundle has neither: run from the checkout)
#   peer-decode                35   transformers generate, batch 1 at 0.5B and 7B, dynamic cache
#   peer-generate-dynamic      50   transformers generate, 7B, 64 and 256 sequences, dynamic cache
#   peer-generate-static       55   the same with cache_implementation="static" (compiles on its warm-up call)
#   tensor-parallel-2          40   only with 2 GPUs and mpirun (else skipped at once, so the 480 above hold): the demo
#                                   at parallel.tensor 2 over NCCL beside one GPU, same selection, accuracy within 1 point
#   report                     10   report.md, report.json (always runs, also after --steps)
#
# Statuses: ok, failed, skipped (with the reason), noted (compute-sanitizer refused the device: not a failure).
# Exit status: 0 when no step failed, 1 when one did, 2 on bad usage. No step aborts the run.
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
here="$root/perf/gpu"
BIN="$root/build/bin"
BUNDLE=""
PREFIX=()
prefix_given=0
bin_given=0
OUTDIR="$root/runs/gpu-check"
PY=python3
BUDGET=480
ONLY=""
COPY_GBS=0
KEEP=0
DRY=0

usage() { sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --bundle) BUNDLE="${2:?--bundle needs a folder}"; shift 2 ;;
    --bin) BIN="${2:?--bin needs a folder}"; bin_given=1; shift 2 ;;
    --prefix) read -r -a PREFIX <<<"${2:?--prefix needs a command}"; prefix_given=1; shift 2 ;;
    --out) OUTDIR="${2:?--out needs a folder}"; shift 2 ;;
    --python) PY="${2:?--python needs an interpreter}"; shift 2 ;;
    --budget) BUDGET="${2:?--budget needs seconds}"; shift 2 ;;
    --steps) ONLY="${2:?--steps needs a list}"; shift 2 ;;
    --copy-gbs) COPY_GBS="${2:?--copy-gbs needs GB/s}"; shift 2 ;;
    --keep-work) KEEP=1; shift ;;
    --dry-run) DRY=1; shift ;;
    -h|--help) usage ;;
    *) echo "check.sh: unknown argument $1" >&2; usage ;;
  esac
done
[[ "$BUDGET" =~ ^[0-9]+$ ]] || { echo "check.sh: --budget must be whole seconds" >&2; exit 2; }
[[ "$COPY_GBS" =~ ^[0-9]+([.][0-9]+)?$ ]] || { echo "check.sh: --copy-gbs must be a number" >&2; exit 2; }
# Run from inside an unpacked bundle (slearn-gpu/perf/gpu/check.sh), the bundle is the default.
if [[ -z "$BUNDLE" && $bin_given == 0 && -x "$root/run" && -d "$root/bin" ]]; then BUNDLE="$root"; fi
if [[ -n "$BUNDLE" ]]; then
  BUNDLE="$(cd "$BUNDLE" 2>/dev/null && pwd)" || { echo "check.sh: no bundle folder $BUNDLE" >&2; exit 2; }
  BIN="$BUNDLE/bin"
  if [[ $prefix_given == 0 && -x "$BUNDLE/run" ]]; then PREFIX=("$BUNDLE/run"); fi
fi
BIN="$(cd "$BIN" 2>/dev/null && pwd)" ||
  { echo "check.sh: no program folder $BIN (build first, or --bin/--bundle)" >&2; exit 2; }

STEPS=(env gpu-tests memcheck racecheck ops ops-peer decode-0.5b decode-7b generate-7b-64 generate-7b-256
  train-7b peer-train-7b demo-gpu-vs-cpu peer-decode peer-generate-dynamic peer-generate-static tensor-parallel-2)
declare -A SLOT=([env]=10 [gpu-tests]=80 [memcheck]=25 [racecheck]=20 [ops]=15 [ops-peer]=20 [decode-0.5b]=15
  [decode-7b]=15 [generate-7b-64]=20 [generate-7b-256]=30 [train-7b]=20 [peer-train-7b]=30 [demo-gpu-vs-cpu]=30
  [peer-decode]=35 [peer-generate-dynamic]=50 [peer-generate-static]=55 [tensor-parallel-2]=40)
REPORT_RESERVE=10
for s in ${ONLY//,/ }; do
  [[ -n "${SLOT[$s]:-}" ]] || { echo "check.sh: unknown step $s (steps: ${STEPS[*]})" >&2; exit 2; }
done

# The GPU runs' arguments, in one place: the dry run validates exactly these with the programs' --dry-run.
# shellcheck disable=SC2054  # the commas are the programs' list syntax
OPS_ARGS=(--copy-mib 2048 --gemm-shapes 8192x8192x8192,7b --gemm-rows 1,64,256,4096 --attention-seqs 512,2048,4096
  --heads 28 --kv-heads 4 --head-dim 128 --warmup 3 --repeat 20)
# shellcheck disable=SC2034,SC2054  # OPS_TINY is read through a nameref in bench
OPS_TINY=(--backend cpu --copy-mib 64 --gemm-shapes 64x96x128,1x256x64 --attention-seqs 64,96 --heads 4 --kv-heads 2
  --head-dim 16 --warmup 1 --repeat 3)
DECODE_TINY=(--shape tiny --backend cpu --prompt-len 16 --new-tokens 8 --warmup-tokens 2 --repeat 1)
# The training step, the same arguments for bench_gpu_train and peer_train.py (so their "case" names match).
TRAIN_ARGS=(--shape qwen2.5-7b --layers 8 --seq-len 512 --micro-batch 8 --warmup 2 --steps 5)
# The CPU stand-ins of both (--backend cpu for the bench, --device cpu for the peer).
TRAIN_TINY_ARGS=(--shape tiny --seq-len 64 --micro-batch 2 --micro-batches 2 --warmup 1 --steps 2)
# shellcheck disable=SC2034  # read through a nameref in bench
TRAIN_TINY=(--backend cpu "${TRAIN_TINY_ARGS[@]}")

WORK="$(mktemp -d "${TMPDIR:-/tmp}/slearn-gpu-check.XXXXXX")"
mkdir -p "$WORK/logs" "$WORK/results" "$OUTDIR"
OUTDIR="$(cd "$OUTDIR" && pwd)"
cleanup() { if [[ $KEEP == 1 ]]; then echo "check.sh: work folder kept: $WORK"; else rm -rf "$WORK"; fi; }
trap cleanup EXIT
START=$(date +%s)
DEADLINE=$((START + BUDGET))
MODE=$([[ $DRY == 1 ]] && echo "dry run" || echo "device")
: >"$WORK/steps.tsv"

# ---- step machinery ----
STEP_STATUS="" STEP_NOTE="" STEP_END=0 STEP_LIMIT=0 LOG="" RES=""
note() { STEP_NOTE="${STEP_NOTE:+$STEP_NOTE; }$*"; }
fail() { STEP_STATUS=failed; note "$@"; }
skip() { [[ $STEP_STATUS == failed ]] || STEP_STATUS=skipped; note "$@"; }
selected() { [[ -z "$ONLY" || ",$ONLY," == *",$1,"* ]]; }
# Runs a command under what is left of the step's time; returns its status (124 or 137 when it was stopped).
bounded() {
  local left=$((STEP_END - $(date +%s)))
  ((left >= 1)) || return 124
  timeout --kill-after=10 "$left" "$@"
}
# Runs one of the programs through the prefix.
prog() { local name=$1; shift; bounded "${PREFIX[@]}" "$BIN/$name" "$@"; }
# Records the outcome of a command that was meant to succeed.
expect_ok() {
  local rc=$1 what=$2
  if ((rc == 124 || rc == 137)); then fail "$what timed out (the step's limit: ${STEP_LIMIT}s)"
  elif ((rc != 0)); then fail "$what exited $rc (see steps.log)"; fi
}
lines_in() { local n; n=$(grep -c '^{' "$1" 2>/dev/null); echo "${n:-0}"; }
have_prog() {
  [[ -x "$BIN/$1" ]] && return 0
  fail "$BIN/$1 not found"
  return 1
}

run_step() {
  CURRENT=$1
  local fn=$2 now left limit t0 t1 secs
  selected "$CURRENT" || return 0
  now=$(date +%s)
  left=$((DEADLINE - REPORT_RESERVE - now))
  LOG="$WORK/logs/$CURRENT.log" RES="$WORK/results/$CURRENT.jsonl"
  STEP_STATUS=ok STEP_NOTE=""
  if ((left < 5)); then
    skip "the budget of ${BUDGET}s was spent before this step"
  else
    limit=$((SLOT[$CURRENT] < left ? SLOT[$CURRENT] : left))
    STEP_LIMIT=$limit STEP_END=$((now + limit))
    t0=$(date +%s.%N)
    echo "==== $CURRENT (timeout ${limit}s) $(date -u +%T)" >>"$LOG"
    "$fn" >>"$LOG" 2>&1
    t1=$(date +%s.%N)
  fi
  secs=$(awk -v a="${t0:-0}" -v b="${t1:-0}" 'BEGIN { printf "%.1f", b - a }')
  printf '%s\t%s\t%s\t%s\n' "$CURRENT" "$STEP_STATUS" "$secs" "${STEP_NOTE//$'\t'/ }" >>"$WORK/steps.tsv"
  printf 'check: %-22s %-8s %6ss  %s\n' "$CURRENT" "$STEP_STATUS" "$secs" "$STEP_NOTE"
}

# ---- steps ----
step_env() {
  local env="$WORK/env.txt" san p missing=()
  {
    echo "mode: $MODE"
    echo "date: $(date -u +%FT%TZ)"
    echo "host: $(uname -n), $(nproc) cores, $(uname -r)"
    echo "bin: $BIN"
    echo "prefix: ${PREFIX[*]:-none}"
  } >"$env"
  if command -v nvidia-smi >/dev/null; then
    bounded nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.memory,power.limit \
      --format=csv,noheader | sed -n '1{s/^\([^,]*\), *\([^,]*\), */gpu: \1\ndriver: \2\ngpu_limits: /;p}' >>"$env"
    bounded nvidia-smi || note "nvidia-smi failed"
  else
    echo "gpu: none (no nvidia-smi)" >>"$env"
    [[ $DRY == 1 ]] || fail "no nvidia-smi on a device run"
  fi
  # shellcheck disable=SC2016
  bounded "$PY" -c '
import importlib.util as u
for name in ("torch", "transformers", "peft"):
    if u.find_spec(name) is None:
        print(f"{name}: not installed")
        continue
    m = __import__(name)
    extra = ""
    if name == "torch":
        seen = f"device {m.cuda.get_device_name()}" if m.cuda.is_available() else "no device"
        extra = f" (CUDA {m.version.cuda}, {seen})"
    print(f"{name}: {m.__version__}{extra}")
' >>"$env" || note "$PY could not report torch and transformers"
  echo "python: $("$PY" --version 2>&1)" >>"$env"
  san=$(find_sanitizer) && echo "compute-sanitizer: $san ($("$san" --version 2>/dev/null | tail -1))" >>"$env" \
    || echo "compute-sanitizer: not found" >>"$env"
  for p in slearn_gpu_tests bench_gpu_ops bench_gpu_decode bench_gpu_train slearn_dist; do
    if [[ ! -x "$BIN/$p" ]]; then missing+=("$p (absent)"); continue; fi
    if ! bounded "${PREFIX[@]}" ldd "$BIN/$p" >"$WORK/ldd.txt" 2>&1 || grep -q 'not found' "$WORK/ldd.txt"; then
      missing+=("$p (libraries: $(grep 'not found' "$WORK/ldd.txt" | awk '{print $1}' | tr '\n' ' '))")
    fi
    cat "$WORK/ldd.txt"
  done
  if ((${#missing[@]})); then
    fail "programs not usable: ${missing[*]}"
    echo "programs: NOT usable: ${missing[*]}" >>"$env"
  else
    echo "programs: slearn_gpu_tests, bench_gpu_ops, bench_gpu_decode, bench_gpu_train, slearn_dist," \
      "all libraries found" >>"$env"
  fi
  cat "$env"
  note "$(sed -n 's/^gpu: //p' "$env")"
}

# "N passed, M skipped, K failed" from gtest's summary lines in the step's log.
gtest_counts() {
  local kind n out=()
  for kind in PASSED SKIPPED FAILED; do
    n=$(sed -n "s/^\[ *$kind *\] \([0-9][0-9]*\) tests\{0,1\}[,.].*/\1/p" "$LOG" | tail -1)
    out+=("${n:-0} ${kind,,}")
  done
  printf -v n '%s, ' "${out[@]}"
  echo "${n%, }"
}

step_gpu_tests() {
  have_prog slearn_gpu_tests || return
  local rc json="$WORK/gpu_tests.json"
  if [[ $DRY == 1 ]]; then
    # Without a GPU every test but one skips and the binary exits 77 (tests/gpu/main.cpp).
    bounded env -u SLEARN_EXPECT_GPU "${PREFIX[@]}" "$BIN/slearn_gpu_tests" --gtest_output="json:$json" </dev/null
    rc=$?
    if ((rc == 77 || rc == 0)); then note "dry-run: $(gtest_counts) (exit $rc: the device tests skip without a GPU)"
    else expect_ok "$rc" "slearn_gpu_tests"; fi
  else
    bounded env SLEARN_EXPECT_GPU=1 "${PREFIX[@]}" "$BIN/slearn_gpu_tests" --gtest_output="json:$json" </dev/null
    rc=$?
    expect_ok "$rc" "slearn_gpu_tests under SLEARN_EXPECT_GPU=1"
    note "$(gtest_counts)"
  fi
  [[ -s "$json" ]] || note "no gtest JSON written"
}

# compute-sanitizer: on the PATH, or in the CUDA toolkit.
find_sanitizer() {
  local c
  for c in "$(command -v compute-sanitizer 2>/dev/null)" "${CUDA_HOME:-/nonexistent}/bin/compute-sanitizer" \
    /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda/compute-sanitizer/compute-sanitizer \
    /usr/local/cuda-*/bin/compute-sanitizer /opt/nvidia/*/compute-sanitizer/compute-sanitizer; do
    [[ -n "$c" && -x "$c" ]] && { echo "$c"; return 0; }
  done
  return 1
}

# The op tests by name (gtest's list), and the filter of each tool: memcheck over every device test but the
# model's end-to-end ones and the host-only suites; racecheck over the kernels with shared memory and barriers
# (attention, norms, sampling, cross-entropy), host-only checks left out. Both leave out the tests made huge on
# purpose (past one grid, past 4096 keys, the largest vocabularies): the tools slow kernels down 10-100x.
test_filter() {
  local tool=$1 heavy='PastOneGrid|PastFourThousand|Largest'
  prog slearn_gpu_tests --gtest_list_tests </dev/null 2>/dev/null | awk '
    /^[^ ]/ { suite = $1; next }
    /^  [^ ]/ { print suite $1 }' >"$WORK/gpu_test_names.txt"
  if [[ $tool == memcheck ]]; then
    grep '^Cuda' "$WORK/gpu_test_names.txt" | grep -Ev '^Cuda(Model|ModelBound|ToleranceRules|BackendChoice)\.' |
      grep -Ev "$heavy"
  else
    grep -E '^Cuda(Ops|TrainOps|Attention|DecodeAttention|PrefillAttention|Sampling)\.' "$WORK/gpu_test_names.txt" |
      grep -Ei 'attention|norm|sampl|crossentropy|fused|kvstore|matches' |
      grep -Ev "$heavy|Rejects|Unsupported|Tiles|RowChunks"
  fi | paste -sd: -
}

# The verdict on one compute-sanitizer log: "STATUS<TAB>NOTE". The tool refusing the device is noted, not failed.
classify_sanitizer() {
  local log=$1 rc=$2 tool=$3 refusal errors
  # Only the tool's own lines (prefixed =========) can say it refused: a test's message never counts as a refusal.
  local refused='device not supported|not supported on this (device|platform)|unable to (initialize|find|launch)'
  refused+='|target application terminated before first instrumented|LibraryNotLoaded|error 999|CUDA_ERROR_UNKNOWN'
  refused+='|unsupported (device|gpu)|failed to (initialize|launch)'
  refusal=$(grep -Ei '^=+ ' "$log" | grep -Eim1 "$refused")
  errors=$(grep -Eo '(ERROR SUMMARY: [0-9]+ error|RACECHECK SUMMARY: .*\(([0-9]+) error)' "$log" |
    grep -Eo '[0-9]+ error' | awk '{s += $1} END {print s + 0}')
  refusal=${refusal//=/}
  refusal=${refusal#"${refusal%%[![:space:]]*}"}
  if [[ -n "$refusal" ]]; then
    printf 'noted\t%s refused the device: %s\n' "$tool" "$refusal"
  elif ((errors > 0)); then printf 'failed\t%s: %d errors\n' "$tool" "$errors"
  elif ((rc == 124 || rc == 137)); then printf 'noted\t%s timed out: no verdict (no error reported before)\n' "$tool"
  elif ((rc != 0)); then
    printf 'failed\t%s: exit %d with no sanitizer error (tests failed under the tool?)\n' "$tool" "$rc"
  elif ! grep -q 'SUMMARY' "$log"; then printf 'failed\t%s printed no summary\n' "$tool"
  else printf 'ok\t%s: 0 errors\n' "$tool"; fi
}

# In the dry run the verdicts are checked on made-up logs, since the tool cannot run here.
sanitizer_self_test() {
  local t="$WORK/sanitizer-sample.log" got bad=0
  local -a cases=(
    $'========= COMPUTE-SANITIZER\n========= Error: Device not supported\n========= Error: error 999\n|1|noted'
    $'========= COMPUTE-SANITIZER\n[ PASSED ] 9 tests.\n========= ERROR SUMMARY: 0 errors\n|0|ok'
    $'========= Invalid __global__ write of size 4 bytes\n========= ERROR SUMMARY: 3 errors\n|99|failed'
    $'========= RACECHECK SUMMARY: 2 hazards displayed (2 errors, 0 warnings)\n|99|failed'
    $'========= RACECHECK SUMMARY: 0 hazards displayed (0 errors, 0 warnings)\n|0|ok'
    $'[ RUN ] CudaOps.RmsNorm\n|124|noted'
    $'[ FAILED ] CudaOps.RmsNorm\n========= ERROR SUMMARY: 0 errors\n|1|failed'
    $'kernel failed to launch: device not supported\n========= ERROR SUMMARY: 0 errors\n|1|failed')
  local c text rc want
  for c in "${cases[@]}"; do
    want=${c##*|}; c=${c%|*}; rc=${c##*|}; text=${c%|*}
    printf '%s' "$text" >"$t"
    got=$(classify_sanitizer "$t" "$rc" test | cut -f1)
    [[ "$got" == "$want" ]] || { echo "sanitizer verdict self-test: got $got, want $want for: $text"; bad=1; }
  done
  return $bad
}

step_sanitizer() {
  local tool=$1 san filter rc verdict
  have_prog slearn_gpu_tests || return
  filter=$(test_filter "$tool")
  [[ -n "$filter" ]] || { fail "no tests matched the $tool filter (gtest_list_tests gave nothing?)"; return; }
  echo "$tool filter: $filter"
  if [[ $DRY == 1 ]]; then
    if sanitizer_self_test; then note "verdict rules checked on sample logs"
    else fail "sanitizer verdict rules wrong"; fi
    skip "dry-run: skipped (needs a GPU); filter of $(tr ':' '\n' <<<"$filter" | wc -l) tests"
    return
  fi
  san=$(find_sanitizer) || { skip "compute-sanitizer not found"; return; }
  local args=(--tool "$tool" --error-exitcode 99 --print-limit 20)
  [[ $tool == memcheck ]] && args+=(--leak-check no)
  bounded env SLEARN_EXPECT_GPU=1 "${PREFIX[@]}" "$san" "${args[@]}" "$BIN/slearn_gpu_tests" \
    --gtest_filter="$filter" </dev/null >"$WORK/$tool.log" 2>&1
  rc=$?
  cat "$WORK/$tool.log"
  verdict=$(classify_sanitizer "$WORK/$tool.log" "$rc" "$tool")
  STEP_STATUS=${verdict%%$'\t'*}
  note "${verdict#*$'\t'}"
}
step_memcheck() { step_sanitizer memcheck; }
step_racecheck() { step_sanitizer racecheck; }

# A benchmark program: on the device its GPU arguments; in the dry run those arguments through --dry-run, then the
# CPU stand-in ($2, an array name) for real.
bench() {
  local name=$1 tiny_var=$2
  shift 2
  have_prog "$name" || return
  local rc
  if [[ $DRY == 1 ]]; then
    local -n stand_in=$tiny_var
    prog "$name" "$@" --dry-run >>"$RES"
    expect_ok $? "$name --dry-run (the GPU arguments)"
    prog "$name" "${stand_in[@]}" >>"$RES"
    expect_ok $? "$name on the CPU backend"
    [[ $STEP_STATUS == failed ]] || note "dry-run: GPU arguments validated; CPU stand-in ran ($(lines_in "$RES") lines)"
  else
    prog "$name" "$@" >>"$RES"
    rc=$?
    expect_ok "$rc" "$name"
    note "$(lines_in "$RES") result lines"
  fi
}

step_ops() {
  bench bench_gpu_ops OPS_TINY "${OPS_ARGS[@]}"
  local gbs
  gbs=$("$PY" "$here/report.py" copy-gbs "$RES") || gbs=0
  if [[ "$gbs" != 0.0 && -n "$gbs" ]]; then COPY_GBS=$gbs; note "copy ${gbs} GB/s"; fi
}

# Batch 1: the best of 2 timed calls after a 4-token warm-up; batched: one timed call after a 2-token warm-up.
step_decode() {
  local shape=$1 batch=$2 plen=$3
  local args=(--shape "$shape" --batch "$batch" --prompt-len "$plen" --new-tokens 256 --copy-gbs "$COPY_GBS")
  ((batch == 1)) || args+=(--warmup-tokens 2 --repeat 1)
  # shellcheck disable=SC2034  # read through a nameref in bench
  local tiny=("${DECODE_TINY[@]}" --batch "$((batch == 1 ? 1 : 4))" --copy-gbs "$COPY_GBS")
  bench bench_gpu_decode tiny "${args[@]}"
  [[ "$COPY_GBS" != 0 ]] || note "no copy bandwidth (the ops step measured none): no floor"
}
step_decode_05b() { step_decode qwen2.5-0.5b 1 128; }
step_decode_7b() { step_decode qwen2.5-7b 1 128; }
step_generate_64() { step_decode qwen2.5-7b 64 256; }
step_generate_256() { step_decode qwen2.5-7b 256 256; }

# A Python peer: on the device for real; in the dry run its arguments through --dry-run (no torch here).
peer() {
  local rc
  if [[ $DRY == 1 ]]; then
    bounded "$PY" "$here/peer_gpu.py" "$@" --dry-run >>"$RES"
    rc=$?
    expect_ok "$rc" "peer_gpu.py $1 --dry-run"
    skip "dry-run: skipped (needs a GPU and torch); arguments validated"
    return
  fi
  PYTHONUNBUFFERED=1 bounded "$PY" "$here/peer_gpu.py" "$@" >>"$RES"
  rc=$?
  expect_ok "$rc" "peer_gpu.py $1"
  note "$(lines_in "$RES") result lines"
}
step_ops_peer() { peer ops "${OPS_ARGS[@]}"; }
step_peer_decode() {
  peer generate --runs qwen2.5-0.5b:1,qwen2.5-7b:1 --prompt-len 128 --new-tokens 256 --cache dynamic \
    --copy-gbs "$COPY_GBS"
}
step_peer_dynamic() {
  peer generate --runs qwen2.5-7b:64,qwen2.5-7b:256 --prompt-len 256 --new-tokens 256 --cache dynamic \
    --copy-gbs "$COPY_GBS"
}
step_peer_static() {
  peer generate --runs qwen2.5-7b:64,qwen2.5-7b:256 --prompt-len 256 --new-tokens 256 --cache static \
    --copy-gbs "$COPY_GBS"
}

# The LoRA training step (bench_gpu_train) and its transformers + PEFT peer at the same arguments. The peer
# exits 3 when torch, transformers or peft is missing or torch sees no GPU: skipped with its message.
step_train_7b() { bench bench_gpu_train TRAIN_TINY "${TRAIN_ARGS[@]}"; }
step_peer_train_7b() {
  local rc
  if [[ $DRY == 1 ]]; then
    bounded "$PY" "$here/peer_train.py" "${TRAIN_ARGS[@]}" --dry-run >>"$RES"
    expect_ok $? "peer_train.py --dry-run"
    # Where this python has torch, transformers and peft, the same step runs on the host at the tiny shape.
    if bounded "$PY" -c 'import torch, transformers, peft' 2>/dev/null; then
      bounded "$PY" "$here/peer_train.py" --device cpu "${TRAIN_TINY_ARGS[@]}" >>"$RES"
      expect_ok $? "peer_train.py --device cpu (the CPU stand-in)"
      [[ $STEP_STATUS == failed ]] || note "dry-run: arguments validated; CPU stand-in ran"
    else
      skip "dry-run: skipped (needs a GPU, torch, transformers and peft); arguments validated"
    fi
    return
  fi
  PYTHONUNBUFFERED=1 bounded "$PY" "$here/peer_train.py" "${TRAIN_ARGS[@]}" >>"$RES" 2>"$WORK/peer-train.err"
  rc=$?
  cat "$WORK/peer-train.err"
  if ((rc == 3)); then skip "$(tail -1 "$WORK/peer-train.err")"; return; fi
  expect_ok "$rc" "peer_train.py"
  note "$(lines_in "$RES") result lines"
}

# The demo on both backends, compared (demo_gpu_vs_cpu.sh: exit 1 a mismatch, 3 cannot run here, 4 a run
# failed). It reads demo/ and configs/ of this checkout ($root).
step_demo() {
  have_prog slearn_dist || return
  # shellcheck disable=SC2054  # cpu,cuda is the script's list syntax
  local rc args=(--bin "$BIN" --root "$root" --python "$PY" --backends cpu,cuda --parallel)
  ((${#PREFIX[@]})) && args+=(--prefix "${PREFIX[*]}")
  if [[ $DRY == 1 ]]; then
    bounded "$here/demo_gpu_vs_cpu.sh" "${args[@]}" --dry-run >>"$RES"
    rc=$?
    if ((rc == 3)); then skip "dry-run: the demo cannot run from here (see steps.log)"; return; fi
    expect_ok "$rc" "demo_gpu_vs_cpu.sh --dry-run"
    skip "dry-run: skipped (needs a GPU); inputs found and the comparison checked on made-up runs"
    return
  fi
  bounded "$here/demo_gpu_vs_cpu.sh" "${args[@]}" >>"$RES"
  rc=$?
  case $rc in
    0) note "$("$PY" "$here/report.py" demo-note "$RES")" ;;
    1) fail "the backends disagree: $("$PY" "$here/report.py" demo-note "$RES")" ;;
    3) skip "the demo cannot run here (its message is in steps.log)" ;;
    4) fail "$("$PY" "$here/report.py" demo-note "$RES") (the end of the log is in steps.log)" ;;
    *) expect_ok "$rc" "demo_gpu_vs_cpu.sh" ;;
  esac
}

# A model sharded over a tensor group of 2 GPUs, its sums over NCCL (kernels/cuda/cuda_group_sum.cpp): the demo at
# parallel.tensor 2 (mpirun -np 2, cuda) beside the demo on one GPU, the same wrong answers selected and accuracy
# after within 1 point. Needs two GPUs and mpirun (a bare one-GPU machine has neither: skipped, at no cost).
step_tensor_parallel() {
  have_prog slearn_dist || return
  local gpus rc
  gpus=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | grep -c .)
  if [[ $DRY == 1 ]]; then skip "dry-run: skipped (needs 2 GPUs and mpirun)"; return; fi
  if ((gpus < 2)); then skip "needs 2 GPUs for a tensor group ($gpus visible)"; return; fi
  command -v mpirun >/dev/null || { skip "needs mpirun (not installed here)"; return; }
  local work="$WORK/tensor-parallel"
  mkdir -p "$work"
  (cd "$root" && prog slearn_dist run --config configs/demo.yaml --set backend=cuda --set "run_dir=$work/t1" --quiet)
  expect_ok $? "the demo on one GPU"
  (cd "$root" && bounded "${PREFIX[@]}" mpirun --oversubscribe -np 2 "$BIN/slearn_dist" run --config configs/demo.yaml \
    --set backend=cuda --set parallel.tensor=2 --set "run_dir=$work/t2" --quiet)
  expect_ok $? "the demo at tensor parallel 2"
  [[ $STEP_STATUS == ok ]] || return
  "$PY" - "$work/t1" "$work/t2" >>"$RES" <<'PY'
import json, sys
runs = [json.load(open(f"{d}/summary.json")) for d in sys.argv[1:]]
ids = [[json.loads(l)["id"] for l in open(f"{d}/incorrect.jsonl")] for d in sys.argv[1:]]
after = [r["accuracy_after"] for r in runs]
print(json.dumps({"case": "tensor-parallel-2", "same_selection": ids[0] == ids[1],
                  "accuracy_after": after, "agree": ids[0] == ids[1] and abs(after[0] - after[1]) <= 0.01}))
PY
  rc=$?
  expect_ok "$rc" "the comparison"
  grep -q '"agree": true' "$RES" || fail "T = 2 and T = 1 disagree: $(tail -1 "$RES")"
  note "$(tail -1 "$RES")"
}

# ---- the run ----
echo "check: $MODE, programs from $BIN${PREFIX[*]:+ through ${PREFIX[*]}}, budget ${BUDGET}s, out $OUTDIR"
run_step env step_env
run_step gpu-tests step_gpu_tests
run_step memcheck step_memcheck
run_step racecheck step_racecheck
run_step ops step_ops
run_step ops-peer step_ops_peer
run_step decode-0.5b step_decode_05b
run_step decode-7b step_decode_7b
run_step generate-7b-64 step_generate_64
run_step generate-7b-256 step_generate_256
run_step train-7b step_train_7b
run_step peer-train-7b step_peer_train_7b
run_step demo-gpu-vs-cpu step_demo
run_step peer-decode step_peer_decode
run_step peer-generate-dynamic step_peer_dynamic
run_step peer-generate-static step_peer_static
run_step tensor-parallel-2 step_tensor_parallel

# ---- the report (always) ----
[[ -f "$WORK/env.txt" ]] || echo "mode: $MODE" >"$WORK/env.txt"
cat "$WORK"/results/*.jsonl >"$OUTDIR/results.jsonl" 2>/dev/null || : >"$OUTDIR/results.jsonl"
[[ -f "$WORK/gpu_tests.json" ]] && cp "$WORK/gpu_tests.json" "$OUTDIR/gpu_tests.json"
for f in "$WORK"/logs/*.log; do
  [[ -f "$f" ]] || continue
  echo "######## $(basename "$f" .log)"
  # A step's log is capped at its last 256 KiB (a sanitizer gone wild must not crowd out the rest).
  tail -c 262144 "$f"
done >"$OUTDIR/steps.log"
if [[ $DRY == 1 ]] && ! timeout 60 "$PY" "$here/report.py" self-test >>"$OUTDIR/steps.log" 2>&1; then
  printf 'report\tfailed\t0\treport.py self-test failed (see steps.log)\n' >>"$WORK/steps.tsv"
fi
if ! timeout 60 "$PY" "$here/report.py" build --work "$WORK" --out "$OUTDIR" >>"$OUTDIR/steps.log" 2>&1; then
  echo "check: report.py failed (see steps.log); writing a plain report" >&2
  { echo "# slearn GPU check ($MODE): report.py failed, the raw step table follows"; echo
    echo '```'; cat "$WORK/steps.tsv"; echo '```'; } >"$OUTDIR/report.md"
  printf '{"mode": "%s", "error": "report.py failed"}\n' "$MODE" >"$OUTDIR/report.json"
  printf 'report\tfailed\t0\treport.py failed\n' >>"$WORK/steps.tsv"
fi
elapsed=$(($(date +%s) - START))
failed=$(awk -F'\t' '$2 == "failed" { print $1 }' "$WORK/steps.tsv" | paste -sd, -)
echo "check: done in ${elapsed}s; ${failed:+FAILED: $failed; }report: $OUTDIR/report.md"
[[ -z "$failed" ]]
