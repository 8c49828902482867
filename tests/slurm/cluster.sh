# shellcheck shell=bash
# A throw-away one-node Slurm cluster for the tests, from Debian's slurm-wlm and munge packages, sourced:
#
#   source tests/slurm/cluster.sh
#   slurm_cluster_install           # apt-get install slurm-wlm munge when missing (root); 77 if it cannot
#   slurm_cluster_start DIR         # munged, slurmctld, slurmd; everything (conf, state, logs) under DIR
#   sbatch ... ; squeue ; ...       # SLURM_CONF now points at DIR/slurm.conf
#   slurm_cluster_stop              # cancels the jobs, stops the daemons, kills what the jobs left behind
#
# Made for a container or a CI machine without systemd or cgroups: processes are tracked through their
# parents (proctrack/linuxproc), tasks are not confined (task/none), no accounting database. It listens on
# two free ports and talks to its own munged through its own socket, so a real Slurm on the machine is
# neither used nor disturbed. The node offers 2 fake GPUs (/dev/null and /dev/zero stand in for the
# device files) so that the GPU lines of the job templates work unchanged; CUDA_VISIBLE_DEVICES is set as
# on a real GPU node. Daemons run in the foreground (-D, -F) as children of the calling shell, so that
# whatever kills the test (ctest's timeout kills the process tree) takes them along too.

SLURM_CLUSTER_DIR=""
# An environment entry the daemons and the jobs carry (sbatch through slurm_cluster_sbatch): it finds the
# jobs' processes after slurmd is gone, since slurmstepd and the ranks are not slurmd's children.
SLURM_CLUSTER_MARKER=""

slurm_cluster_log() { echo "[$(date +%T)] $*"; }

slurm_cluster_install() {
  local missing=() package
  for package in slurm-wlm munge; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    slurm_cluster_log "SKIP: ${missing[*]} not installed and cannot install them (needs root and apt-get)"
    return 77
  fi
  slurm_cluster_log "installing ${missing[*]} from Debian's packages"
  # The packages' scripts start their daemons when they can: forbid that for the duration (policy-rc.d,
  # as Debian's container images do), so that only the daemons this test starts, and stops, ever run.
  local policy=/usr/sbin/policy-rc.d added_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod 755 "$policy" && added_policy=1
  fi
  local status=0
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${missing[@]}" >/dev/null; } || status=$?
  [ "$added_policy" = 1 ] && rm -f "$policy"
  if [ "$status" -ne 0 ]; then
    slurm_cluster_log "apt-get install ${missing[*]} failed (status $status)"
    return 1
  fi
}

# Two free TCP ports for slurmctld and slurmd, below the kernel's ephemeral range (where srun and the
# daemons take their own ports from), picked at random so that runs side by side do not collide.
_slurm_cluster_ports() {
  python3 -c '
import random, socket
low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
picked = []
while len(picked) < 2:
    port = random.randrange(10000, max(low, 10002))
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
        if port not in picked:
            picked.append(port)
    except OSError:
        pass
    finally:
        s.close()
print(*picked)'
}

_slurm_cluster_wait_file() {  # FILE SECONDS
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    [ -e "$1" ] && return 0
    sleep 0.1
  done
  return 1
}

# DIR and every directory above it must be open to all (munged checks its socket's path).
slurm_cluster_start() {
  local dir=$1
  SLURM_CLUSTER_DIR=$dir
  SLURM_CLUSTER_MARKER="SLEARN_TEST_SLURM_CLUSTER=$dir"
  mkdir -p "$dir"/{munge,munge-key,state,spool,log}
  # munged insists that everyone may reach its socket, and that only its user reads the key.
  chmod 755 "$dir" "$dir/munge"
  chmod 700 "$dir/munge-key"
  head -c 1024 /dev/urandom > "$dir/munge-key/munge.key"
  chmod 400 "$dir/munge-key/munge.key"
  env "$SLURM_CLUSTER_MARKER" munged -F --key-file="$dir/munge-key/munge.key" --socket="$dir/munge/munge.socket" \
    --pid-file="$dir/munge/munged.pid" --seed-file="$dir/munge-key/munged.seed" \
    --log-file="$dir/log/munged.log" > "$dir/log/munged.out" 2>&1 &
  echo $! > "$dir/munged.pid"
  _slurm_cluster_wait_file "$dir/munge/munge.socket" 20 ||
    { slurm_cluster_log "munged did not start: $(tail -n 1 "$dir/log/munged.out")"; return 1; }

  # The node as slurmd sees it (CPUs, sockets, cores, memory): a node that differs from its slurm.conf line
  # is drained. Fewer than 2 CPUs: declare 2 and let slurm.conf win, so that 2 tasks fit.
  local node name cpus ctld_port slurmd_port overrides=""
  node=$(slurmd -C | head -n 1)
  name=$(sed -n 's/^NodeName=\([^ ]*\).*/\1/p' <<<"$node")
  cpus=$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$node")
  if [ "${cpus:-0}" -lt 2 ]; then
    node="NodeName=$name CPUs=2 $(grep -o 'RealMemory=[0-9]*' <<<"$node")"
    overrides="SlurmdParameters=config_overrides"
  fi
  printf 'Name=gpu File=/dev/null\nName=gpu File=/dev/zero\n' > "$dir/gres.conf"
  export SLURM_CONF=$dir/slurm.conf
  local attempt i state
  for attempt in 1 2 3; do
    read -r ctld_port slurmd_port < <(_slurm_cluster_ports)
    _slurm_cluster_conf "$dir" "$name" "$node" "$ctld_port" "$slurmd_port" "$overrides" > "$dir/slurm.conf"
    # -i: ignore state from an earlier run (there is none: the state directory is new).
    env "$SLURM_CLUSTER_MARKER" slurmctld -D -i > "$dir/log/slurmctld.out" 2>&1 &
    echo $! > "$dir/slurmctld.pid"
    env "$SLURM_CLUSTER_MARKER" slurmd -D > "$dir/log/slurmd.out" 2>&1 &
    echo $! > "$dir/slurmd.pid"
    for ((i = 0; i < 60; i++)); do
      kill -0 "$(cat "$dir/slurmctld.pid")" 2>/dev/null && kill -0 "$(cat "$dir/slurmd.pid")" 2>/dev/null || break
      state=$(timeout 10 sinfo -h -N -o %t 2>/dev/null || true)
      if [ "$state" = idle ]; then
        slurm_cluster_log "slurm cluster up: node $name, $(timeout 10 sinfo -h -o '%c CPUs, %G'), ports $ctld_port $slurmd_port"
        return 0
      fi
      sleep 0.5
    done
    slurm_cluster_log "attempt $attempt: the node did not come up (state '${state:-}'):"
    tail -n 3 "$dir/log/slurmctld.out" "$dir/log/slurmd.out"
    _slurm_cluster_kill_pidfile "$dir/slurmd.pid"
    _slurm_cluster_kill_pidfile "$dir/slurmctld.pid"
  done
  return 1
}

_slurm_cluster_conf() {  # DIR NODENAME NODELINE CTLD_PORT SLURMD_PORT OVERRIDES
  local dir=$1
  cat <<EOF
# Written by tests/slurm/cluster.sh: a one-node test cluster, everything under $dir
ClusterName=slearntest
SlurmctldHost=$2(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$4
SlurmdPort=$5
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/state/slurmctld.pid
SlurmdPidFile=$dir/spool/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SchedulerType=sched/builtin
MpiDefault=none
ReturnToService=2
KillWait=15
MinJobAge=600
$6
GresTypes=gpu
$3 NodeAddr=127.0.0.1 Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

# sbatch, with the marker in the job's environment.
slurm_cluster_sbatch() { env "$SLURM_CLUSTER_MARKER" sbatch "$@"; }

# Pids of processes whose environment holds the entry $1 (NAME=VALUE).
_slurm_cluster_marked() {
  local marker=$1 proc pid
  for proc in /proc/[0-9]*; do
    pid=${proc#/proc/}
    [ "$pid" = "$$" ] || [ "$pid" = "$BASHPID" ] && continue
    { tr '\0' '\n' < "$proc/environ"; } 2>/dev/null | grep -qxF "$marker" && echo "$pid"
  done
}

_slurm_cluster_kill_pidfile() {  # FILE: TERM, up to 10 s, then KILL
  local pid i
  [ -f "$1" ] || return 0
  pid=$(cat "$1")
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null; return 0; }
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  return 0
}

# Stops everything slurm_cluster_start started, and whatever its jobs left running. Safe to call twice,
# and after a failed start.
slurm_cluster_stop() {
  local marker=$SLURM_CLUSTER_MARKER dir=$SLURM_CLUSTER_DIR i pids
  [ -n "$dir" ] || return 0
  if [ -f "$dir/slurmctld.pid" ] && kill -0 "$(cat "$dir/slurmctld.pid")" 2>/dev/null; then
    # Jobs first, while slurmctld and slurmd can still end them cleanly.
    # shellcheck disable=SC2046  # one argument per job id
    timeout 20 scancel --quiet --full $(timeout 10 squeue -h -o %i 2>/dev/null) 2>/dev/null
    for ((i = 0; i < 40; i++)); do
      [ -z "$(timeout 10 squeue -h -o %i 2>/dev/null)" ] && break
      sleep 0.5
    done
  fi
  _slurm_cluster_kill_pidfile "$dir/slurmd.pid"
  _slurm_cluster_kill_pidfile "$dir/slurmctld.pid"
  _slurm_cluster_kill_pidfile "$dir/munged.pid"
  rm -f "$dir/slurmd.pid" "$dir/slurmctld.pid" "$dir/munged.pid"
  # Steps and ranks survive their slurmd by design (slurmstepd is not its child): end any left.
  if [ -n "$marker" ]; then
    pids=$(_slurm_cluster_marked "$marker")
    if [ -n "$pids" ]; then
      slurm_cluster_log "killing processes the jobs left: $(echo $pids)"
      kill -KILL $pids 2>/dev/null
    fi
  fi
  SLURM_CLUSTER_DIR=""
  SLURM_CLUSTER_MARKER=""
  return 0
}
