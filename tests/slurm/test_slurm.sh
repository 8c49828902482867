#!/usr/bin/env bash
# The Slurm templates on a real (one-node, throw-away) Slurm: tests/slurm/cluster.sh starts munged,
# slurmctld and slurmd from Debian's packages, and this script submits the project's own
# launch/slurm-1node.sbatch and launch/slurm-multinode.sbatch with 2 tasks and 2 (fake) GPUs:
#   A. reference: the same configuration under plain mpirun, 2 ranks (launch/slearn-mpirun.sh)
#   B. slurm-1node.sbatch (mpirun), uninterrupted: the same outputs as A
#   C. slurm-multinode.sbatch on one node (srun --mpi=pmix), requeued with `scontrol requeue` as soon as
#      the first answers are written and again in training (what preemption does: SIGTERM, then the job
#      back in the queue); the requeued job resumes and ends with A's outputs; Slurm counts the restarts
#   D. slurm-1node.sbatch (mpirun), sent SIGUSR1 mid-run as `#SBATCH --signal=B:USR1@...` does before the
#      time limit: the ranks save and exit 75 and the job requeues itself, then resumes (a slearn_dist
#      without SIGUSR1 handling dies of it instead: then the same job submitted again must resume)
#
#   tests/slurm/test_slurm.sh SLEARN_DIST [CONFIG]     (CONFIG default: configs/demo.yaml, the demo job, or
#                                                      $SLEARN_SLURM_TEST_CONFIG; relative to the checkout)
# Every run gets the overrides in $SLEARN_SLURM_TEST_SET (space-separated KEY=VALUE; default none). The
# interruptions in training wait for checkpoint step $SLEARN_SLURM_TEST_STEP (default 20) or later. The demo
# takes about 50 s on 2 cores; for the tiny fixture, whose run takes a second, train longer:
#   SLEARN_SLURM_TEST_SET=train.epochs=20 SLEARN_SLURM_TEST_STEP=8 \
#     tests/slurm/test_slurm.sh build/bin/slearn_dist tests/fixtures/pipeline-tiny.yaml
# Exit 0: passed; 1: failed; 77: skipped (no Slurm, and no root to install it). Every daemon and job it
# started is stopped on the way out, whatever happens. SLEARN_SLURM_TEST_KEEP=1 keeps the work directory.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
[ $# -ge 1 ] || { echo "usage: $0 SLEARN_DIST [CONFIG]" >&2; exit 2; }
binary="$(readlink -f "$1")"
config=${2:-${SLEARN_SLURM_TEST_CONFIG:-configs/demo.yaml}}
cd "$root"
[ -x "$binary" ] || { echo "no slearn_dist at $1" >&2; exit 2; }
[ -f "$config" ] || { echo "no configuration $config" >&2; exit 2; }
overrides=()
for kv in ${SLEARN_SLURM_TEST_SET-}; do overrides+=(--set "$kv"); done
step=${SLEARN_SLURM_TEST_STEP:-20}

# shellcheck source=tests/slurm/cluster.sh
source "$here/cluster.sh"
log() { slurm_cluster_log "$*"; }
fail() { log "FAIL: $*"; exit 1; }

# slurmd starts the jobs' processes as their users: only root can run it (CI and containers are root).
[ "$(id -u)" -eq 0 ] || { log "SKIP: the test Slurm needs root (slurmd)"; exit 77; }
status=0
slurm_cluster_install || status=$?
[ "$status" -eq 0 ] || exit "$status"

work=$(mktemp -d /tmp/slearn-slurm-test.XXXXXX)
chmod 755 "$work"  # munged wants every directory above its socket open to all
finish() {
  local code=$?
  set +e
  trap - EXIT INT TERM
  [ -n "${watchdog:-}" ] && kill "$watchdog" 2>/dev/null
  if [ "$code" -ne 0 ] && [ -d "$work" ]; then
    log "failed (status $code); the last lines of the logs:"
    for f in "$work"/*.out "$work"/*.log "$work"/cluster/log/*; do
      [ -f "$f" ] && { echo "---- $f"; tail -n 25 "$f"; }
    done
  fi
  slurm_cluster_stop
  if [ "${SLEARN_SLURM_TEST_KEEP:-0}" = 1 ]; then log "kept $work"; else rm -rf "$work"; fi
  exit "$code"
}
trap finish EXIT
trap 'log "stopped by a signal"; exit 130' INT TERM
# A time limit of our own, under ctest's (600 s): ctest kills the test's process tree, but the jobs'
# processes are not in it (slurmstepd is nobody's child), so end here first, through finish().
# (Its sleep must not outlive it either: ctest waits for every holder of the test's output to end.)
(
  trap 'kill "$sleeper" 2>/dev/null; exit 0' TERM
  sleep "${SLEARN_SLURM_TEST_LIMIT:-500}" &
  sleeper=$!
  wait "$sleeper" && echo "[$(date +%T)] FAIL: over ${SLEARN_SLURM_TEST_LIMIT:-500} s" && kill -TERM $$
) &
watchdog=$!

# Open MPI: root in containers and CI is fine here; no single-copy shared memory (no ptrace there).
if [ "$(id -u)" -eq 0 ]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
export OMPI_MCA_btl_vader_single_copy_mechanism=none

job_field() {  # JOB FIELD: one field of `scontrol show job`
  timeout 10 scontrol -o show job "$1" 2>/dev/null | tr ' ' '\n' | sed -n "s/^$2=//p" | head -n 1
}

# Lets a requeued JOB go as soon as that is safe. Slurm holds a requeued job for about two minutes
# (Reason=BeginTime) and the test does not wait that long; but not before its previous run has been
# cleaned up and a new second has begun: slurmd refuses to launch a job whose credential is not newer
# than the kill of its previous run ("already killed, do not launch batch job"), to the second.
release() {
  local job=$1
  [ "$(job_field "$job" JobState)" = PENDING ] && [ "$(job_field "$job" Reason)" = BeginTime ] || return 0
  [ "$(timeout 10 sinfo -h -N -o %t 2>/dev/null)" = idle ] || return 0
  sleep 2
  timeout 10 scontrol update JobId="$job" StartTime=now >/dev/null 2>&1 || true
}

# Waits (at most SECONDS) until JOB has ended; prints its final state; lets a requeued job go at once.
wait_job() {
  local job=$1 limit=$2 start=$SECONDS state reason
  while [ $((SECONDS - start)) -lt "$limit" ]; do
    state=$(job_field "$job" JobState)
    reason=$(job_field "$job" Reason)
    case "$state" in
      COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY|BOOT_FAIL|DEADLINE)
        # A job that requeues itself can show an end state for a moment: believe it a second later.
        sleep 1
        [ "$(job_field "$job" JobState)" = "$state" ] && { echo "$state"; return 0; } ;;
      PENDING) [ "$reason" = BeginTime ] && release "$job" ;;
    esac
    sleep 0.2
  done
  echo "TIMEOUT_WAITING($state)"
}

# Waits (at most SECONDS) until POINT is reached while JOB runs with Restarts=RESTARTS. POINT: a file of
# the run directory that must exist and not be empty, or "step:N", a training checkpoint of step N or
# later. 0: reached; 1: the job ended or the time ran out first.
wait_point() {
  local job=$1 run_dir=$2 point=$3 restarts=$4 limit=$5 start=$SECONDS state
  while [ $((SECONDS - start)) -lt "$limit" ]; do
    state=$(job_field "$job" JobState)
    case "$state" in
      COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY|BOOT_FAIL|DEADLINE) return 1 ;;
      PENDING) release "$job" ;;
      RUNNING)
        if [ "$(job_field "$job" Restarts)" = "$restarts" ]; then
          if [[ "$point" == step:* ]]; then
            reached "$run_dir" "${point#step:}" && return 0
          else
            [ -s "$run_dir/$point" ] && return 0
          fi
        fi ;;
    esac
    sleep 0.05
  done
  return 1
}

reached() {  # RUN_DIR N: a checkpoint of step N or later exists
  local f n
  for f in "$1"/checkpoints/step-*.h5; do
    [ -e "$f" ] || continue
    n=${f##*/step-}
    n=$((10#${n%.h5}))
    [ "$n" -ge "$2" ] && return 0
  done
  return 1
}

# What the run directory holds: where an interruption landed.
holds() { (cd "$1" && ls -d answers.rank-* judgements.rank-* checkpoints/step-* eval-after 2>/dev/null | tr '\n' ' '); }

# Waits until JOB is back in the queue after its start number RESTARTS (Restarts counted up), at most 90 s.
wait_requeued() {
  local job=$1 restarts=$2 start=$SECONDS
  while [ $((SECONDS - start)) -lt 90 ]; do
    [ "$(job_field "$job" Restarts)" -gt "$restarts" ] 2>/dev/null && return 0
    case "$(job_field "$job" JobState)" in COMPLETED|FAILED|CANCELLED) return 1 ;; esac
    sleep 0.1
  done
  return 1
}

# NAME TEMPLATE LAUNCHER RUN_DIR [sbatch options...]: submits launch/TEMPLATE on this node's 2 cores and
# 2 GPUs (LAUNCHER "": the template's own choice); prints the job id.
submit() {
  local name=$1 template=$2 launcher=$3 run_dir=$4
  shift 4
  SLEARN_BINARY=$binary SLEARN_LAUNCHER=$launcher slurm_cluster_sbatch --parsable --chdir="$root" \
    --job-name="$name" --output="$work/$name.out" --time=15 --nodes=1 \
    --ntasks-per-node=2 --gpus-per-node=2 --cpus-per-task=1 "$@" \
    "launch/$template" "$run_dir" "$config" "${overrides[@]}" --quiet
}

compare() {  # RUN_DIR: against the reference
  python3 "$here/compare_runs.py" "$work/runs/plain" "$1" 2 || fail "$1 differs from the plain mpirun run"
}

log "config $config, binary $binary, work $work"
slurm_cluster_start "$work/cluster" || fail "the Slurm test cluster did not start"

# ---- A. the reference: plain mpirun, 2 ranks ----
t=$SECONDS
"$root/launch/slearn-mpirun.sh" -n 2 --binary "$binary" run --config "$config" \
  --set "run_dir=$work/runs/plain" "${overrides[@]}" --quiet > "$work/plain.log" 2>&1 || fail "plain mpirun run (see plain.log)"
[ -f "$work/runs/plain/summary.json" ] || fail "plain mpirun run wrote no summary.json"
log "A. plain mpirun -np 2: done in $((SECONDS - t)) s"

# ---- B. the template, mpirun, uninterrupted ----
t=$SECONDS
job=$(submit sbatch slurm-1node.sbatch "" "$work/runs/sbatch")
state=$(wait_job "$job" 240)
[ "$state" = COMPLETED ] || fail "job $job (mpirun) ended $state"
grep -q "slurm-job: .* 2 ranks, GPUs 0,1" "$work/sbatch.out" || fail "the job did not see 2 ranks and GPUs 0,1"
compare "$work/runs/sbatch"
log "B. sbatch launch/slurm-1node.sbatch (mpirun): job $job COMPLETED in $((SECONDS - t)) s, outputs equal A's"

# ---- C. the multi-node template (on one node), srun --mpi=pmix, requeued twice mid-stage ----
t=$SECONDS
run_dir="$work/runs/requeued"
job=$(submit requeued slurm-multinode.sbatch "" "$run_dir")
restarts=0
for point in answers.rank-0.jsonl "step:$step"; do
  if ! wait_point "$job" "$run_dir" "$point" "$restarts" 180; then
    log "C. $point: the job had ended ($(job_field "$job" JobState)) before it appeared"
    break
  fi
  scontrol requeue "$job" || fail "scontrol requeue $job"
  wait_requeued "$job" "$restarts" || fail "job $job not back in the queue after scontrol requeue"
  restarts=$((restarts + 1))
  log "C. requeued job $job at $point (Restarts=$restarts); the run directory held: $(holds "$run_dir")"
done
state=$(wait_job "$job" 240)
[ "$state" = COMPLETED ] || fail "requeued job $job (srun) ended $state"
[ "$restarts" -ge 1 ] || fail "job $job was never requeued: it finished too fast for the test"
[ "$(job_field "$job" Restarts)" = "$restarts" ] || fail "job $job: Restarts=$(job_field "$job" Restarts), expected $restarts"
starts=$(grep -c "^slurm-job: .* start [0-9]* (restart count" "$work/requeued.out" || true)
[ "$starts" = $((restarts + 1)) ] || fail "job $job's output shows $starts starts, expected $((restarts + 1))"
compare "$run_dir"
grep -q "run: srun --mpi=pmix" "$work/requeued.out" || fail "the multi-node template did not use srun --mpi=pmix"
log "C. sbatch launch/slurm-multinode.sbatch (srun --mpi=pmix), requeued $restarts times: COMPLETED in $((SECONDS - t)) s, outputs equal A's"

# ---- D. the template, mpirun, SIGUSR1 to the batch script (the time-limit warning) ----
t=$SECONDS
run_dir="$work/runs/usr1"
job=$(submit usr1 slurm-1node.sbatch mpirun "$run_dir")
wait_point "$job" "$run_dir" "step:$step" 0 180 || fail "job $job ended before training step $step"
scancel --signal=USR1 --batch "$job" || fail "scancel --signal=USR1 --batch $job"
log "D. sent SIGUSR1 to job $job's batch script in training"
state=$(wait_job "$job" 240)
ended=$(sed -n 's/^slurm-job: .* slearn_dist ended with status \([0-9]*\) after SIGUSR1.*/\1/p' "$work/usr1.out" | head -n 1)
case "$ended" in
  75)
    grep -q "requeueing job $job" "$work/usr1.out" || fail "job $job did not ask to be requeued after status 75"
    [ "$(job_field "$job" Restarts)" = 1 ] || fail "job $job was not requeued (Restarts=$(job_field "$job" Restarts))"
    [ "$state" = COMPLETED ] || fail "the requeued job $job ended $state"
    log "D. the ranks saved and exited 75, the job requeued itself and resumed: COMPLETED in $((SECONDS - t)) s" ;;
  138)
    # 128 + SIGUSR1: a slearn_dist without SIGUSR1 handling dies of it, and the job fails. Submitting the
    # same job again must still resume from the run directory.
    log "D. this slearn_dist has no SIGUSR1 handling (status 138): job $job ended $state; submitting it again"
    job=$(submit usr1 slurm-1node.sbatch mpirun "$run_dir")
    state=$(wait_job "$job" 240)
    [ "$state" = COMPLETED ] || fail "the resubmitted job $job ended $state" ;;
  *) fail "after SIGUSR1 slearn_dist ended with status '${ended:-?}' (expected 75, or 138 without SIGUSR1 handling)" ;;
esac
compare "$run_dir"
log "D. outputs equal A's ($((SECONDS - t)) s)"

log "PASS"
