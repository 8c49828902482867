#!/usr/bin/env bash
# slearn_dist under plain mpirun, outside Slurm (a workstation, a cloud VM, a node you are logged in to):
#
#   launch/slearn-mpirun.sh [options] [--] SUBCOMMAND [slearn_dist options...]
#   launch/slearn-mpirun.sh -n 4 run --config run.yaml
#   launch/slearn-mpirun.sh -n 8 --hostfile hosts run --config run.yaml --set run_dir=runs/big
#
# Options (before the subcommand):
#   -n, --ranks N     ranks (default: $SLEARN_RANKS, else one per GPU that nvidia-smi lists, else 1)
#   --hostfile FILE   Open MPI hostfile for several machines (default: this machine only)
#   --bind MODE       cores: each rank gets cores of its own, nproc/N of them (default on one machine)
#                     none: no binding; each rank takes its share of the machine (default with --hostfile)
#   --allow-root      let Open MPI run as root (containers); refused otherwise, as Open MPI does
#   --binary PATH     default: $SLEARN_BINARY, else build/bin/slearn_dist of this checkout
#   --dry-run         print the mpirun command and exit
# Anything else for mpirun: SLEARN_MPIRUN_ARGS="--mca btl self,vader" (word-split).
#
# Signals: the first Ctrl-C, SIGTERM, SIGHUP or SIGUSR1 asks the ranks to stop at a safe point with their
# outputs saved (SIGUSR1, which mpirun forwards to every rank); a second Ctrl-C or SIGTERM aborts them.
# The exit status is slearn_dist's: 75 means "stopped on request, outputs saved": run the same command
# again to resume.
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly EXIT_STOPPED=75
usage() { sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit "${1:-0}"; }
die() { echo "slearn-mpirun: error: $*" >&2; exit 2; }

ranks=${SLEARN_RANKS:-}
hostfile=""
bind=""
binary=${SLEARN_BINARY:-$root/build/bin/slearn_dist}
dry_run=0
allow_root=0
while [ $# -gt 0 ]; do
  case "$1" in
    -n|--ranks|-np) ranks=${2:?"$1 needs a number"}; shift 2 ;;
    --hostfile) hostfile=${2:?"--hostfile needs a file"}; shift 2 ;;
    --bind) bind=${2:?"--bind needs cores or none"}; shift 2 ;;
    --allow-root) export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; allow_root=1; shift ;;
    --binary) binary=${2:?"--binary needs a path"}; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage 0 ;;
    --) shift; break ;;
    -*) die "unknown option $1 (slearn_dist's own options go after the subcommand; see --help)" ;;
    *) break ;;
  esac
done
[ $# -gt 0 ] || usage 2

if [ -z "$ranks" ]; then
  gpus=0
  command -v nvidia-smi >/dev/null 2>&1 && gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
  ranks=$(( gpus > 0 ? gpus : 1 ))
fi
[[ "$ranks" =~ ^[1-9][0-9]*$ ]] || die "the number of ranks must be a positive integer, not '$ranks'"
[ -x "$binary" ] || die "no slearn_dist at $binary (build it: launch/setup.sh, or pass --binary)"

command=(mpirun -np "$ranks")
[ -n "$hostfile" ] && command+=(--hostfile "$hostfile")
# Open MPI binds each rank to ONE core when there are two ranks or fewer, which would leave slearn_dist a
# single thread per rank; say what we want instead.
cores=$(nproc --all)
[ -n "$bind" ] || bind=$([ -z "$hostfile" ] && echo cores || echo none)
case "$bind" in
  cores)
    if [ "$ranks" -le "$cores" ]; then
      command+=(--map-by "slot:PE=$(( cores / ranks ))" --bind-to core)
    else
      # More ranks than cores (tests, small machines): share them.
      command+=(--oversubscribe --bind-to none)
    fi ;;
  none) command+=(--bind-to none) ;;
  *) die "--bind must be cores or none, not '$bind'" ;;
esac
# shellcheck disable=SC2206  # extra options are a word-split list on purpose
command+=(${SLEARN_MPIRUN_ARGS:-} "$binary" "$@")

if [ "$dry_run" = 1 ]; then
  [ "$allow_root" = 1 ] && printf 'OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 '
  printf '%q ' "${command[@]}"; echo
  exit 0
fi

# mpirun runs in a process group of its own (set -m), so a Ctrl-C on the terminal reaches this script
# alone, and the script decides what the ranks get.
pid=""
requests=0
on_signal() {
  requests=$((requests + 1))
  [ -n "$pid" ] || exit 130
  if [ "$requests" -eq 1 ] || [ "$1" = USR1 ]; then
    echo "slearn-mpirun: SIG$1: asking the ranks to save and stop (again to abort)" >&2
    kill -USR1 "$pid" 2>/dev/null
  else
    echo "slearn-mpirun: SIG$1 again: aborting" >&2
    kill -TERM "$pid" 2>/dev/null
  fi
}
for sig in INT TERM HUP USR1; do
  # shellcheck disable=SC2064  # expand $sig now
  trap "on_signal $sig" "$sig"
done
set -m
"${command[@]}" &
pid=$!
set +m
# `wait` returns early whenever a trapped signal arrives: wait while mpirun lives, then take its status.
while :; do
  wait "$pid"
  kill -0 "$pid" 2>/dev/null || break
done
wait "$pid"
status=$?
[ "$status" -eq "$EXIT_STOPPED" ] &&
  echo "slearn-mpirun: stopped with outputs saved; run the same command again to resume" >&2
exit "$status"
