#!/usr/bin/env bash
# The launch scripts without a cluster: they parse, the wrapper builds the mpirun command it should, and
# passes on the exit status and the stop request (SIGTERM -> SIGUSR1 to the ranks -> 75).
#   tests/slurm/test_launch_scripts.sh
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root" || exit 2
failures=0
check() {  # DESCRIPTION, then a command that must succeed
  local what=$1
  shift
  if "$@" >/dev/null 2>&1; then echo "ok    $what"; else echo "FAIL  $what"; failures=$((failures + 1)); fi
}

for f in launch/slearn-mpirun.sh launch/slurm-job.sh launch/slurm-*.sbatch tests/slurm/*.sh; do
  check "$f parses" bash -n "$f"
done
if command -v shellcheck >/dev/null; then
  check "shellcheck launch/slearn-mpirun.sh launch/slurm-job.sh launch/slurm-*.sbatch" \
    shellcheck -S warning launch/slearn-mpirun.sh launch/slurm-job.sh launch/slurm-1node.sbatch launch/slurm-multinode.sbatch
fi

# The templates are the same job on different shapes: the signal, requeue and log lines must not drift.
for line in '#SBATCH --signal=B:USR1@' '#SBATCH --requeue' '#SBATCH --open-mode=append' '#SBATCH --ntasks-per-node=' \
            '#SBATCH --gpus-per-node=' 'exec bash "$SLEARN_ROOT/launch/slurm-job.sh" "$@"'; do
  check "both templates have: $line" bash -c "grep -qF -- '$line' launch/slurm-1node.sbatch && grep -qF -- '$line' launch/slurm-multinode.sbatch"
done

cores=$(nproc --all)
check "wrapper: 1 rank gets every core" bash -c "[[ \"\$(launch/slearn-mpirun.sh --dry-run --binary /bin/true -n 1 run)\" == *'--map-by slot:PE=$cores --bind-to core /bin/true run'* ]]"
check "wrapper: more ranks than cores share them" bash -c "[[ \"\$(launch/slearn-mpirun.sh --dry-run --binary /bin/true -n $((cores + 1)) run)\" == *'--oversubscribe --bind-to none'* ]]"
check "wrapper: --hostfile leaves the ranks unbound" bash -c "[[ \"\$(launch/slearn-mpirun.sh --dry-run --binary /bin/true -n 2 --hostfile h run)\" == *'--hostfile h --bind-to none'* ]]"
check "wrapper: arguments after the subcommand are slearn_dist's" bash -c "[[ \"\$(launch/slearn-mpirun.sh --dry-run --binary /bin/true -n 1 run --config 'a b.yaml' --set x=1)\" == *'/bin/true run --config a\\ b.yaml --set x=1 '* ]]"
check "wrapper: a bad rank count is refused" bash -c "! launch/slearn-mpirun.sh --dry-run --binary /bin/true -n 0 run"
check "wrapper: an unknown option is refused" bash -c "! launch/slearn-mpirun.sh --bogus run"
check "wrapper: root allowed when asked" bash -c "launch/slearn-mpirun.sh --dry-run --binary /bin/true --allow-root run | grep -q '^OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 mpirun'"
check "wrapper: and only then" bash -c "launch/slearn-mpirun.sh --dry-run --binary /bin/true run | grep -q '^mpirun'"
check "slurm-job.sh outside Slurm says so" bash -c "env -u SLURM_JOB_ID bash launch/slurm-job.sh runs/x configs/x.yaml 2>&1 | grep -q 'not inside a Slurm job'"

# The wrapper under real mpirun: a stand-in for slearn_dist that saves and exits 75 on SIGUSR1.
if command -v mpirun >/dev/null; then
  fake=$(mktemp -d)
  trap 'rm -rf "$fake"' EXIT
  cat > "$fake/rank.sh" <<'EOF'
#!/bin/bash
trap 'touch "$0.$OMPI_COMM_WORLD_RANK.saved"; exit 75' USR1
for _ in $(seq 300); do sleep 0.1; done
exit 3
EOF
  chmod +x "$fake/rank.sh"
  root_ok=()
  [ "$(id -u)" -eq 0 ] && root_ok=(--allow-root)
  launch/slearn-mpirun.sh -n 2 "${root_ok[@]}" --binary "$fake/rank.sh" --bind none x > "$fake/log" 2>&1 &
  pid=$!
  sleep 3
  kill -TERM "$pid"
  wait "$pid"
  status=$?
  check "wrapper: SIGTERM reaches the ranks as SIGUSR1 and 75 comes back (got $status)" [ "$status" -eq 75 ]
  check "wrapper: both ranks saved" test -e "$fake/rank.sh.0.saved" -a -e "$fake/rank.sh.1.saved"
  check "wrapper: says how to resume" grep -q "run the same command again to resume" "$fake/log"
  launch/slearn-mpirun.sh -n 1 "${root_ok[@]}" --binary /bin/false x >/dev/null 2>&1
  status=$?
  check "wrapper: passes a failure on (got $status)" [ "$status" -ne 0 ]
fi

echo "$failures failed"
[ "$failures" -eq 0 ]
