#!/usr/bin/env bash
# Sets up (packages, build) and runs the main job on the embedded default: the whole self-learning loop
# (answer, judge, gather the wrong ones, LoRA on them, evaluate before and after) with the tiny demo model
# shipped in demo/, under mpirun with 2 ranks. A few minutes on 2 cores. Extra arguments go to
# `slearn_dist run`, e.g.  launch/demo.sh --set train_on=all --set run_dir=runs/demo-all
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/setup.sh"
cd "$SLEARN_ROOT"
# Open MPI refuses to start as root unless told; containers and CI run as root.
if [ "$(id -u)" -eq 0 ]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
set -x
mpirun --oversubscribe -np 2 build/bin/slearn_dist run --config configs/demo.yaml "$@"
