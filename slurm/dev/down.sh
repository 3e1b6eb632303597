#!/usr/bin/env bash
# (ftlaunch copy: slurm/dev/down.sh)
# down.sh - stop the cluster started by up.sh, by the PIDs recorded in its pidfile.
# Cancels jobs first (so slurmstepd and job processes end), then stops slurmd, slurmctld,
# slurmdbd, mariadbd and munged (munged only if up.sh started it), removes the netns/bridge
# and the marked /etc/hosts lines. Leaves configs and logs ($SLURM_LAB_BASE/log) in place.
set -uo pipefail

BASE=${SLURM_LAB_BASE:-/tmp/ftl-slurm}
PIDFILE=$BASE/run/cluster.pids
BRIDGE=slurmlab0
NS_PREFIX=slurmlab-
NODES=(n1 n2 n3)
MARK='# slurm-lab'
CONF=${SLURM_LAB_CONF_DIR:-$BASE/etc}/slurm.conf
[ -f "$CONF" ] && export SLURM_CONF=$CONF
log() { echo "[slurm-lab down] $*" >&2; }

if [ ! -s "$PIDFILE" ]; then
  log "no pidfile $PIDFILE: nothing to stop"
else
  # 1. cancel all jobs while the controller is still up, wait for their steps to end
  ctld=$(awk '$1=="slurmctld"{print $2}' "$PIDFILE")
  if [ -n "$ctld" ] && [ "$(cat "/proc/$ctld/comm" 2>/dev/null)" = slurmctld ] \
     && timeout 3 squeue -h >/dev/null 2>&1; then
    jobs=$(timeout 5 squeue -h -o %i 2>/dev/null | tr '\n' ' ')
    if [ -n "${jobs// /}" ]; then
      log "cancelling jobs: $jobs"
      # shellcheck disable=SC2086
      timeout 10 scancel $jobs 2>/dev/null || true
      for _ in $(seq 100); do [ -z "$(timeout 5 squeue -h 2>/dev/null)" ] && break; sleep 0.2; done
    fi
  fi
  # 2. stop daemons in reverse start order; check /proc/PID/comm so a reused PID is never hit
  # plus the daemons' own pidfiles, in case a test restarted a daemon by hand
  mapfile -t entries < <(
    tac "$PIDFILE"
    for f in "$BASE"/run/slurmd-*.pid; do [ -s "$f" ] && echo "slurmd $(cat "$f")"; done
    [ -s "$BASE/run/slurmctld.pid" ] && echo "slurmctld $(cat "$BASE/run/slurmctld.pid")"
    [ -s "$BASE/run/slurmdbd.pid" ] && echo "slurmdbd $(cat "$BASE/run/slurmdbd.pid")"
    [ -s "$BASE/db/run/mysqld.pid" ] && echo "mariadbd $(cat "$BASE/db/run/mysqld.pid")"
  )
  stopped=()
  for e in "${entries[@]}"; do
    read -r name pid <<< "$e"
    case $name in net|mode) continue ;; esac
    [[ $pid =~ ^[0-9]+$ ]] || continue
    [[ " ${stopped[*]} " == *" $pid "* ]] && continue
    comm=$(cat "/proc/$pid/comm" 2>/dev/null) || continue
    if [ "$comm" = "$name" ]; then
      kill -TERM "$pid" 2>/dev/null && stopped+=("$pid")
    else
      log "pid $pid is '$comm', not '$name': left alone"
    fi
  done
  for _ in $(seq 100); do
    alive=0
    for pid in "${stopped[@]}"; do [ -e "/proc/$pid" ] && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.2
  done
  for pid in "${stopped[@]}"; do
    [ -e "/proc/$pid" ] && { log "pid $pid still alive after 20s: SIGKILL"; kill -KILL "$pid" 2>/dev/null; }
  done
  # 3. slurmstepd left by OUR slurmds (jobs that ignored SIGTERM), by PID. Ours = it holds our
  #    slurmd log open (fd -> $BASE/log/slurmd-<node>.log); slurmstepd does not keep slurmd's env.
  for pid in $(ps -C slurmstepd -o pid= 2>/dev/null); do
    if ls -l "/proc/$pid/fd" 2>/dev/null | grep -q -- "-> $BASE/log/slurmd-"; then
      log "leftover slurmstepd $pid: SIGKILL"; kill -KILL "$pid" 2>/dev/null
    fi
  done
  rm -f "$PIDFILE"
  log "stopped: ${stopped[*]:-none}"
fi

# 4. network namespaces / bridge (netns mode) and /etc/hosts lines
for n in "${NODES[@]}"; do
  [ -e "/run/netns/$NS_PREFIX$n" ] && ip netns del "$NS_PREFIX$n" 2>/dev/null
done
ip link show "$BRIDGE" >/dev/null 2>&1 && ip link del "$BRIDGE" 2>/dev/null
if grep -q "$MARK\$" /etc/hosts 2>/dev/null; then
  grep -v "$MARK\$" /etc/hosts > "$BASE/hosts.tmp" && cat "$BASE/hosts.tmp" > /etc/hosts && rm -f "$BASE/hosts.tmp"
fi
exit 0
