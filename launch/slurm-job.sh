#!/usr/bin/env bash
# The body shared by the Slurm templates (launch/slurm-*.sbatch), run as the job's batch script:
#   slurm-job.sh RUN_DIR CONFIG [more `slearn_dist run` options, e.g. --set train_on=all]
# It starts one slearn_dist rank per Slurm task, turns Slurm's warnings into a clean stop, and requeues the
# job when slearn_dist says it stopped with its outputs saved (exit 75), so that the requeued job carries on
# where this one stopped. Settings come from the environment (the templates set the common ones):
#   SLEARN_ROOT      the checkout; default: the directory the job was submitted from
#   SLEARN_BINARY    default: $SLEARN_ROOT/build/bin/slearn_dist
#   SLEARN_LAUNCHER  mpirun (Open MPI's own launcher) or srun (Slurm's, ranks wired up through PMIx)
#   SLEARN_REQUEUE   1 (default): after exit 75, requeue this job; 0: just end (resume by submitting again)
#   SLEARN_MPIRUN_ARGS / SLEARN_SRUN_ARGS   extra launcher options (word-split)
set -uo pipefail  # not -e: every exit status below is looked at

readonly EXIT_STOPPED=75  # slearn_dist: "stopped on request, outputs saved; run the same command to resume"

log() { echo "slurm-job: $(date '+%F %T') $*"; }
die() { log "error: $*" >&2; exit 2; }

[ $# -ge 2 ] || die "usage: slurm-job.sh RUN_DIR CONFIG [slearn_dist run options...]"
[ -n "${SLURM_JOB_ID:-}" ] || die "not inside a Slurm job (submit a launch/slurm-*.sbatch template with sbatch)"
run_dir=$1
config=$2
shift 2
root=${SLEARN_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}
binary=${SLEARN_BINARY:-$root/build/bin/slearn_dist}
launcher=${SLEARN_LAUNCHER:-mpirun}
[ -x "$binary" ] || die "no slearn_dist at $binary (build it, or set SLEARN_BINARY)"
[ -f "$config" ] || die "no configuration file $config (relative paths are from $PWD)"

ranks=${SLURM_NTASKS:-}
[ -n "$ranks" ] || die "the job has no task count: give sbatch --ntasks-per-node (one per GPU) or --ntasks"
cpus_per_rank=${SLURM_CPUS_PER_TASK:-}
case "$launcher" in
  mpirun)
    # Inside an allocation Open MPI reads the nodes and slots from Slurm and starts its daemons on the
    # other nodes with srun; the ranks themselves are its children, not Slurm tasks.
    # With --cpus-per-task each rank gets that many cores of its own (slearn_dist then runs that many
    # threads); without it the ranks are not bound and each takes its share of the node.
    if [ -n "$cpus_per_rank" ]; then
      binding=(--map-by "slot:PE=$cpus_per_rank" --bind-to core)
    else
      binding=(--map-by slot --bind-to none)
    fi
    # On SIGTERM (scancel, preemption, the time limit itself: Slurm signals mpirun too) mpirun passes it
    # on and kills the ranks odls_base_sigkill_timeout seconds later (1 by default), whatever they are
    # doing; what they flushed and checkpointed before survives. Raising it (export
    # OMPI_MCA_odls_base_sigkill_timeout=30) gives them time to save, but mpirun then waits twice that long
    # after any rank ends with a non-zero status, 75 included. srun has neither problem (the ranks get
    # Slurm's KillWait): prefer it where jobs are preempted. The warning before the time limit (USR1)
    # involves no SIGTERM and is not affected.
    # shellcheck disable=SC2206  # SLEARN_MPIRUN_ARGS is a list of options on purpose
    command=(mpirun -np "$ranks" "${binding[@]}" ${SLEARN_MPIRUN_ARGS:-})
    ;;
  srun)
    # --cpus-per-task is passed on explicitly: since Slurm 22.05 srun no longer inherits it from sbatch.
    # --kill-on-bad-exit: a rank that dies takes the others with it instead of leaving them blocked in a
    # collective until the time limit. slearn_dist writes everything before MPI_Finalize (a barrier), so
    # ranks that end with 75 together are never cut short by it.
    # shellcheck disable=SC2206
    command=(srun --mpi=pmix --kill-on-bad-exit=1 ${cpus_per_rank:+--cpus-per-task="$cpus_per_rank"}
             ${SLEARN_SRUN_ARGS:-})
    ;;
  *) die "SLEARN_LAUNCHER must be mpirun or srun, not '$launcher'" ;;
esac
command+=("$binary" run --config "$config" --set "run_dir=$run_dir" "$@")

log "job $SLURM_JOB_ID, start $((${SLURM_RESTART_COUNT:-0} + 1)) (restart count ${SLURM_RESTART_COUNT:-0})," \
    "${SLURM_JOB_NUM_NODES:-1} node(s) ${SLURM_JOB_NODELIST:-?}, $ranks ranks, GPUs ${CUDA_VISIBLE_DEVICES:-none}"
log "run: ${command[*]}"

# Signals. The launcher runs in the background so that this shell can take signals while it works (bash
# runs a trap only once the foreground command ends).
#  USR1: what `#SBATCH --signal=B:USR1@SECONDS` sends to this shell alone, SECONDS before the time limit
#        (also `scancel --signal=USR1 --batch JOB`). Passed to the launcher, which hands it to every rank
#        (mpirun and srun both forward SIGUSR1): the ranks agree on a safe point, save, and exit 75.
#  TERM: Slurm is ending the job (scancel, preemption, requeue, the time limit reached). Slurm signals every
#        process of the job, the ranks included, and kills what is left after KillWait (or the preemption
#        GraceTime); this shell only has to stay alive and pass the request on in case it came to it alone.
stop_signal=""
launcher_pid=""
on_signal() {
  stop_signal=$1
  log "received SIG$1: asking the ranks to save and stop"
  [ -n "$launcher_pid" ] && kill -USR1 "$launcher_pid" 2>/dev/null
}
trap 'on_signal USR1' USR1
trap 'on_signal TERM' TERM
trap 'on_signal INT' INT

"${command[@]}" &
launcher_pid=$!
# `wait` returns early (status > 128) whenever a trapped signal arrives: keep waiting while the launcher
# lives, then ask once more for its own status, which bash keeps after reaping it.
while :; do
  wait "$launcher_pid"
  kill -0 "$launcher_pid" 2>/dev/null || break
done
wait "$launcher_pid"
status=$?
log "slearn_dist ended with status $status${stop_signal:+ after SIG$stop_signal}"

if [ "$status" -eq "$EXIT_STOPPED" ]; then
  if [ "$stop_signal" = TERM ] || [ "$stop_signal" = INT ]; then
    # Slurm is already ending the job: a requeue or a preemption (PreemptMode=REQUEUE) puts it back in
    # the queue by itself, and a requeue from here would be refused.
    log "outputs saved; Slurm is ending this job: requeued or preempted, it comes back and resumes;" \
        "cancelled, submit the same job again to resume from $run_dir"
  elif [ "${SLEARN_REQUEUE:-1}" = 1 ]; then
    # Requeueing a running job ends it (this shell gets SIGTERM) and puts it back in the queue under the
    # same id; Slurm holds a requeued job for a couple of minutes, then it starts again and resumes from
    # the run directory. Needs #SBATCH --requeue (or the site's JobRequeue=1).
    log "outputs saved; requeueing job $SLURM_JOB_ID to resume"
    scontrol requeue "$SLURM_JOB_ID" && exit "$EXIT_STOPPED"
    log "requeue refused; submit the same job again to resume from $run_dir"
  else
    log "outputs saved; submit the same job again to resume from $run_dir"
  fi
fi
exit "$status"
