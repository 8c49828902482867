#!/usr/bin/env bash
# perf/gpu/demo_gpu_vs_cpu.sh: the embedded demo's main job (configs/demo.yaml on demo/: answer, judge, gather
# the wrong ones, LoRA on them, evaluate before and after; see launch/demo.sh) once per backend, each into a
# fresh run directory, then compared: the same selection of wrong answers (the ids of incorrect.jsonl, what the
# gather stage wrote) and accuracy after within --tolerance points. Run by perf/gpu/check.sh on the device.
# One JSON line on stdout (both runs' accuracies, incorrect counts, stage and wall times, the verdict).
#
#   perf/gpu/demo_gpu_vs_cpu.sh [--backends cpu,cuda] [--bin DIR | --bundle DIR] [options]
#
#   --backends A,B  the two backends (default cpu,cuda); cpu,cpu exercises the comparison without a GPU
#   --bin DIR       folder of slearn_dist (default: ROOT/build/bin)
#   --bundle DIR    an unpacked GPU bundle: DIR/bin/slearn_dist, run through DIR/run
#   --prefix CMD    run slearn_dist as CMD slearn_dist ARGS (default: DIR/run with --bundle, else nothing)
#   --root DIR      where configs/ and demo/ are; the runs start there (default: this script's repository;
#                   the bundle does not carry demo/, so from inside one pass the repository checkout)
#   --config FILE   the run configuration, relative to ROOT (default configs/demo.yaml)
#   --set K=V       an override for both runs, repeatable (e.g. --set train.epochs=5)
#   --np N          ranks per run: 1 (default) is a singleton slearn_dist, no launcher (the bundle has none);
#                   N > 1 runs mpirun --oversubscribe -np N
#   --tolerance P   accuracy-after difference allowed, in percentage points (default 1)
#   --parallel      both runs at once (a cpu run then gets all cores but 2, which the other run's host thread
#                   and launches keep): half the wall time, at the cost of wall times measured side by side
#   --work DIR      run directories and logs here (kept); default a temporary folder, removed unless --keep
#   --python PY     for reading the runs' JSON (standard library only; default python3)
#   --dry-run       check the inputs, print the plan, and check the comparison on made-up run directories
#
# Exit status: 0 the runs agree; 1 they do not (the JSON line says how); 2 bad usage; 3 cannot run here (no
# slearn_dist, no demo data: the message says which); 4 a run failed (its log's tail on stderr).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BIN=""
BUNDLE=""
PREFIX=()
prefix_given=0
BACKENDS="cpu,cuda"
CONFIG="configs/demo.yaml"
OVERRIDES=()
NP=1
TOLERANCE=1
WORK=""
KEEP=0
PY=python3
DRY=0
PARALLEL=0

usage() { sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --backends) BACKENDS="${2:?--backends needs A,B}"; shift 2 ;;
    --bin) BIN="${2:?--bin needs a folder}"; shift 2 ;;
    --bundle) BUNDLE="${2:?--bundle needs a folder}"; shift 2 ;;
    --prefix) read -r -a PREFIX <<<"${2:?--prefix needs a command}"; prefix_given=1; shift 2 ;;
    --root) ROOT="${2:?--root needs a folder}"; shift 2 ;;
    --config) CONFIG="${2:?--config needs a file}"; shift 2 ;;
    --set) OVERRIDES+=(--set "${2:?--set needs KEY=VALUE}"); shift 2 ;;
    --np) NP="${2:?--np needs a count}"; shift 2 ;;
    --tolerance) TOLERANCE="${2:?--tolerance needs points}"; shift 2 ;;
    --work) WORK="${2:?--work needs a folder}"; KEEP=1; shift 2 ;;
    --keep) KEEP=1; shift ;;
    --parallel) PARALLEL=1; shift ;;
    --python) PY="${2:?--python needs an interpreter}"; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    -h|--help) usage ;;
    *) echo "demo_gpu_vs_cpu: unknown argument $1" >&2; usage ;;
  esac
done
say() { echo "demo_gpu_vs_cpu: $*" >&2; }
IFS=, read -r -a BACKEND_LIST <<<"$BACKENDS"
if ((${#BACKEND_LIST[@]} != 2)); then say "--backends takes two backends, A,B (got $BACKENDS)"; exit 2; fi
for b in "${BACKEND_LIST[@]}"; do
  [[ "$b" =~ ^(cpu|cuda|auto)$ ]] || { say "unknown backend $b (cpu, cuda or auto)"; exit 2; }
done
[[ "$NP" =~ ^[1-9][0-9]*$ ]] || { say "--np must be a positive count"; exit 2; }
[[ "$TOLERANCE" =~ ^[0-9]+([.][0-9]+)?$ ]] || { say "--tolerance must be a number of points"; exit 2; }

if [[ -n "$BUNDLE" ]]; then
  BUNDLE="$(cd "$BUNDLE" 2>/dev/null && pwd)" || { say "no bundle folder $BUNDLE"; exit 3; }
  BIN="$BUNDLE/bin"
  if [[ $prefix_given == 0 && -x "$BUNDLE/run" ]]; then PREFIX=("$BUNDLE/run"); fi
fi
BIN="${BIN:-$ROOT/build/bin}"
ROOT="$(cd "$ROOT" 2>/dev/null && pwd)" || { say "no folder $ROOT (--root)"; exit 3; }
BIN="$(cd "$BIN" 2>/dev/null && pwd)" ||
  { say "no program folder $BIN (build slearn_dist, or --bin/--bundle)"; exit 3; }
PROGRAM="$BIN/slearn_dist"
[[ -x "$PROGRAM" ]] || { say "no $PROGRAM (build slearn_dist, or --bin/--bundle)"; exit 3; }
[[ -f "$ROOT/$CONFIG" ]] || { say "no $ROOT/$CONFIG (the demo's configuration; --root names the checkout)"; exit 3; }
for needed in demo/model/config.json demo/model/model.safetensors demo/data/train.jsonl demo/data/eval.jsonl; do
  [[ -f "$ROOT/$needed" ]] ||
    { say "no $ROOT/$needed: the demo's data is not here (--root names the checkout)"; exit 3; }
done
LAUNCH=()
if ((NP > 1)); then
  command -v mpirun >/dev/null || { say "--np $NP needs mpirun, which is not on the PATH"; exit 3; }
  LAUNCH=(mpirun --oversubscribe -np "$NP")
fi
# Open MPI refuses to start as root unless told (containers, the device machine).
if [[ "$(id -u)" == 0 ]]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi

# The comparison of two finished run directories: reads summary.json and incorrect.jsonl of each, prints the
# JSON line and exits 0 (agree) or 1. Arguments: tolerance, parallel (0/1), then backend, run_dir, rc, wall_s
# for each run.
compare() {
  "$PY" - "$@" <<'PY'
import json, os, sys

tolerance, parallel = float(sys.argv[1]), sys.argv[2] == "1"
runs = []
for backend, run_dir, rc, wall in zip(*[iter(sys.argv[3:])] * 4):
    run = dict(backend=backend, run_dir=run_dir, rc=int(rc), wall_s=float(wall))
    problems = []
    try:
        with open(os.path.join(run_dir, "summary.json"), encoding="utf-8") as f:
            summary = json.load(f)
        for key in ("accuracy_before", "accuracy_after", "incorrect", "trained_on", "skipped_steps"):
            run[key] = summary.get(key)
        run["stage_s"] = {k: v.get("wall_seconds") for k, v in summary.get("stages", {}).items()}
    except (OSError, ValueError) as e:
        problems.append(f"summary.json: {e}")
    ids = []
    try:
        with open(os.path.join(run_dir, "incorrect.jsonl"), encoding="utf-8") as f:
            for n, raw in enumerate(f):
                if raw.strip():
                    record = json.loads(raw)
                    ids.append(str(record.get("id", f"line {n + 1}")))
    except (OSError, ValueError) as e:
        problems.append(f"incorrect.jsonl: {e}")
    run["selected"] = len(ids)
    run["_ids"] = set(ids)
    run["problems"] = problems
    runs.append(run)
a, b = runs
only_a, only_b = sorted(a["_ids"] - b["_ids"]), sorted(b["_ids"] - a["_ids"])
same = not only_a and not only_b and not a["problems"] and not b["problems"]
after = [r.get("accuracy_after") for r in runs]
diff = abs(after[0] - after[1]) * 100.0 if None not in after else None
after_ok = diff is not None and diff <= tolerance + 1e-9
reasons = []
for n, r in enumerate(runs, 1):
    if r["rc"] != 0:
        last = ""
        try:  # the run's log is its run directory's name + .log
            with open(r["run_dir"] + ".log", encoding="utf-8", errors="replace") as f:
                last = ([l.strip() for l in f if l.strip()] or [""])[-1][:300]
        except OSError:
            pass
        reasons.append(f"run {n} ({r['backend']}) exited {r['rc']}" + (f": {last}" if last else ""))
if not same:
    reasons.append(f"selections differ: {len(only_a)} only in {a['backend']}, {len(only_b)} only in {b['backend']}"
                   + (f" ({'; '.join(a['problems'] + b['problems'])})" if a["problems"] or b["problems"] else ""))
if not after_ok:
    reasons.append("accuracy after missing" if diff is None else
                   f"accuracy after differs by {diff:.2f} points (tolerance {tolerance:g})")
for r in runs:
    del r["_ids"]
failed = any(r["rc"] != 0 for r in runs)
line = dict(bench="demo", impl="slearn", case=f"demo {a['backend']} vs {b['backend']}",
            backends=[a["backend"], b["backend"]], runs=runs, same_selection=same,
            only_in={a["backend"] + "#1": only_a[:20], b["backend"] + "#2": only_b[:20]},
            accuracy_after_diff_points=diff, tolerance_points=tolerance, parallel=parallel,
            ok=same and after_ok and not failed,
            verdict="; ".join(reasons) or "agree")
print(json.dumps(line))
sys.exit(0 if line["ok"] else 1)
PY
}

# The comparison's own check, on made-up run directories: agreeing runs pass; a different selection or an
# accuracy 2 points off fails.
self_test() {
  local t bad=0 rc
  t="$(mktemp -d "${TMPDIR:-/tmp}/demo-compare-test.XXXXXX")"
  make_run() {  # dir accuracy_after ids...
    local dir=$1 after=$2 id
    shift 2
    mkdir -p "$dir"
    printf '{"accuracy_before": 0.555, "accuracy_after": %s, "incorrect": %d, "stages": %s}\n' \
      "$after" "$#" '{"train": {"wall_seconds": 1.0}}' >"$dir/summary.json"
    : >"$dir/incorrect.jsonl"
    for id in "$@"; do printf '{"id": "%s", "question": "q", "answer": "a"}\n' "$id" >>"$dir/incorrect.jsonl"; done
  }
  make_run "$t/a" 1.0 t001 t004 t009
  make_run "$t/b" 0.995 t009 t001 t004
  make_run "$t/c" 1.0 t001 t004 t010
  make_run "$t/d" 0.98 t001 t004 t009
  compare 1 0 cpu "$t/a" 0 1.0 cuda "$t/b" 0 1.0 >/dev/null; rc=$?
  ((rc == 0)) || { say "self-test: agreeing runs were not accepted (exit $rc)"; bad=1; }
  compare 1 0 cpu "$t/a" 0 1.0 cuda "$t/c" 0 1.0 >/dev/null; rc=$?
  ((rc == 1)) || { say "self-test: a different selection was accepted (exit $rc)"; bad=1; }
  compare 1 0 cpu "$t/a" 0 1.0 cuda "$t/d" 0 1.0 >/dev/null; rc=$?
  ((rc == 1)) || { say "self-test: an accuracy 2 points off was accepted (exit $rc)"; bad=1; }
  compare 1 0 cpu "$t/a" 0 1.0 cuda "$t/missing" 4 1.0 >/dev/null; rc=$?
  ((rc == 1)) || { say "self-test: a run without outputs was accepted (exit $rc)"; bad=1; }
  rm -rf "$t"
  return $bad
}

if [[ $DRY == 1 ]]; then
  self_test || exit 1
  printf '{"plan": "demo_gpu_vs_cpu.sh", "backends": ["%s", "%s"], "program": "%s", "prefix": "%s", ' \
    "${BACKEND_LIST[0]}" "${BACKEND_LIST[1]}" "$PROGRAM" "${PREFIX[*]:-}"
  printf '"root": "%s", "config": "%s", "np": %d, "tolerance_points": %s, "comparison_self_test": "passed"}\n' \
    "$ROOT" "$CONFIG" "$NP" "$TOLERANCE"
  exit 0
fi

if [[ -z "$WORK" ]]; then WORK="$(mktemp -d "${TMPDIR:-/tmp}/slearn-demo-compare.XXXXXX")"; fi
mkdir -p "$WORK" || { say "cannot make $WORK"; exit 3; }
WORK="$(cd "$WORK" && pwd)"
CHILDREN=()
# shellcheck disable=SC2317  # called through the trap
cleanup() {
  local pid
  for pid in "${CHILDREN[@]}"; do kill "$pid" 2>/dev/null; done
  # slearn_dist stops at a safe point within seconds (docs/stopping.md); its files are complete after that.
  for pid in "${CHILDREN[@]}"; do wait "$pid" 2>/dev/null; done
  if [[ $KEEP == 1 ]]; then say "run directories and logs kept in $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
# A stop from outside (check.sh's timeout) ends the running jobs too, not only this script.
trap 'say "stopped"; exit 124' TERM INT

cd "$ROOT" || exit 3
declare -a DIRS LOGS STARTS RCS WALLS
start_run() {
  local i=$1 backend=${BACKEND_LIST[$1]} extra=()
  DIRS[i]="$WORK/run-$((i + 1))-$backend"
  LOGS[i]="$WORK/run-$((i + 1))-$backend.log"
  if [[ $PARALLEL == 1 && $backend == cpu ]]; then extra=(--set "threads=$(($(nproc) > 3 ? $(nproc) - 2 : 1))"); fi
  STARTS[i]=$(date +%s.%N)
  # The job notes its own end time (the other may end first); a TERM to the wrapper is passed on to the job.
  (
    trap 'kill "$job" 2>/dev/null' TERM
    "${LAUNCH[@]}" "${PREFIX[@]}" "$PROGRAM" run --config "$CONFIG" --set "backend=$backend" \
      --set "run_dir=${DIRS[i]}" "${extra[@]}" "${OVERRIDES[@]}" --quiet </dev/null >"${LOGS[i]}" 2>&1 &
    job=$!
    wait "$job"
    rc=$?
    date +%s.%N >"${LOGS[i]}.end"
    exit "$rc"
  ) &
  CHILDREN[i]=$!
}
finish_run() {
  local i=$1 end
  wait "${CHILDREN[i]}"
  RCS[i]=$?
  end=$(cat "${LOGS[i]}.end" 2>/dev/null || date +%s.%N)
  WALLS[i]=$(awk -v a="${STARTS[i]}" -v b="$end" 'BEGIN { printf "%.2f", b - a }')
  say "${BACKEND_LIST[i]}: exit ${RCS[i]} in ${WALLS[i]}s (log ${LOGS[i]})"
}
if [[ $PARALLEL == 1 ]]; then
  start_run 0
  start_run 1
  finish_run 0
  finish_run 1
else
  start_run 0
  finish_run 0
  start_run 1
  finish_run 1
fi
CHILDREN=()
args=()
failed=0
for i in 0 1; do
  if ((RCS[i] != 0)); then
    failed=1
    say "the ${BACKEND_LIST[i]} run failed (exit ${RCS[i]}); the end of its log:"
    tail -n 15 "${LOGS[i]}" >&2
  fi
  args+=("${BACKEND_LIST[i]}" "${DIRS[i]}" "${RCS[i]}" "${WALLS[i]}")
done
compare "$TOLERANCE" "$PARALLEL" "${args[@]}"
verdict=$?
((failed)) && exit 4
exit $verdict
