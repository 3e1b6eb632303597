#!/usr/bin/env bash
# (ftlaunch copy: slurm/dev/up.sh; used by tests/slurm_fixture.py and `bash slurm/dev/up.sh` by hand)
# up.sh - start a REAL Slurm cluster (slurmctld + 3 x slurmd, munge) on this one Debian 12
# machine, as root, without systemd: partition debug (default) = n1, n2 with fake GPUs; partition
# cpu = n3, no GPUs, MaxTime 1 hour, MaxNodes 1 (a second kind of node and limits, for the checks
# made before sbatch).
# Idempotent: if the cluster recorded in the pidfile is already up, configured as asked, with
# every node responding (idle, or running another session's jobs), it just says so and exits 0.
#
# Modes (SLURM_LAB_MODE):
#   netns (default) - each slurmd runs in its own network + UTS namespace: nodes n1/n2 have
#                     their own hostname (`hostname` = n1 / n2 / n3) and address (10.77.0.1N on a
#                     bridge "slurmlab0" whose root-namespace side is 10.77.0.1, where
#                     slurmctld listens). Closest to real multi-node.
#   multi           - Debian's Slurm is built with --enable-multiple-slurmd: the slurmd in the
#                     root namespace on ports 1700N, NodeAddr 127.0.0.1N.
#                     `hostname` is the same on every node. Used automatically if netns fails.
# Options (env):
#   SLURM_LAB_BASE=/tmp/ftl-slurm   state, logs, spool, pidfile
#   SLURM_LAB_ACCOUNTING=0|1                1 = also mariadb + slurmdbd (sacct works)
#   SLURM_LAB_GPUS=2                        fake "gpu" GRES per node of debug (char devs like /dev/null);
#                                           0: none anywhere
#   SLURM_LAB_TIMEOUT=60                    seconds to wait for every node to be idle
#   SLURM_LAB_CONF_DIR=$SLURM_LAB_BASE/etc  where slurm.conf (+gres.conf, slurmdbd.conf) go;
#                                           set it to /etc/slurm to make plain `sbatch` work
#                                           without SLURM_CONF (then it affects every user!)
# Also writes marked lines ("# slurm-lab") to /etc/hosts so n1/n2 resolve.
# stdout (eval-able):  export SLURM_CONF=<conf>   /   # SLURM_LAB_UP <mode> <pidfile>
# Clients (sbatch, srun, sinfo, submitit...) need that SLURM_CONF unless CONF_DIR=/etc/slurm;
# jobs get SLURM_CONF from slurmd, so srun inside jobs works either way.
set -euo pipefail

BASE=${SLURM_LAB_BASE:-/tmp/ftl-slurm}
MODE=${SLURM_LAB_MODE:-netns}
ACCT=${SLURM_LAB_ACCOUNTING:-0}
GPUS=${SLURM_LAB_GPUS:-2}
TIMEOUT=${SLURM_LAB_TIMEOUT:-60}
CLUSTER=ftlab
PARTITION=debug             # the default partition: n1, n2 (with the fake GPUs)
GPU_NODES=(n1 n2)
CPU_PARTITION=cpu           # n3: no GPUs, MaxTime 1 hour, one node per job
CPU_NODES=(n3)
CPU_MAX_TIME=01:00:00
NODES=("${GPU_NODES[@]}" "${CPU_NODES[@]}")
NET=10.77.0            # netns mode only: a private /24 that exists only inside this machine
BRIDGE=slurmlab0
NS_PREFIX=slurmlab-
CONF_DIR=${SLURM_LAB_CONF_DIR:-$BASE/etc}
CONF=$CONF_DIR/slurm.conf
export SLURM_CONF=$CONF     # for every slurm command and daemon started below
DB_PORT=3307
PIDFILE=$BASE/run/cluster.pids
MARK='# slurm-lab'
HERE=$(cd "$(dirname "$0")" && pwd)

log() { echo "[slurm-lab up] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root"

# ---------------------------------------------------------------- idempotency
nodes_idle() {  # true when every node reports plain "idle" (no '*' = responding)
  local out
  out=$(timeout 10 sinfo -h -N -o '%N %t' 2>/dev/null | sort -u) || return 1
  [ "$(printf '%s\n' "$out" | grep -c ' idle$')" -eq "${#NODES[@]}" ]
}
nodes_serving() {  # every node responds, idle or running jobs (another session's, maybe): no restart
  local out
  out=$(timeout 10 sinfo -h -N -o '%N %t' 2>/dev/null | sort -u) || return 1
  [ "$(printf '%s\n' "$out" | grep -cE ' (idle|alloc|mix|comp)$')" -eq "${#NODES[@]}" ]
}
pids_alive() {
  [ -s "$PIDFILE" ] || return 1
  local name pid
  while read -r name pid; do
    [ "$name" = net ] || [ "$name" = mode ] && continue
    [ -r "/proc/$pid/comm" ] || return 1
  done < "$PIDFILE"
}
configured_as_asked() {  # the running cluster's slurm.conf has the GPUs asked for
  if [ "$GPUS" -gt 0 ]; then grep -q " Gres=gpu:$GPUS " "$CONF" 2>/dev/null; return; fi
  if grep -q " Gres=" "$CONF" 2>/dev/null; then return 1; fi
}
if pids_alive && nodes_serving && configured_as_asked; then
  log "already up (pidfile $PIDFILE)"
  echo "export SLURM_CONF=$CONF"
  echo "# SLURM_LAB_UP $(awk '$1=="mode"{print $2}' "$PIDFILE") $PIDFILE"
  exit 0
fi
if [ -e "$PIDFILE" ]; then
  log "stale/partial cluster in $PIDFILE, or another SLURM_LAB_GPUS: running down.sh first"
  SLURM_LAB_BASE=$BASE "$HERE/down.sh" >&2 || true
fi

# ---------------------------------------------------------------- packages
need=()
command -v slurmctld >/dev/null || need+=(slurmctld)
command -v slurmd    >/dev/null || need+=(slurmd)
command -v sbatch    >/dev/null || need+=(slurm-client)
command -v munged    >/dev/null || need+=(munge)
if [ "$ACCT" = 1 ]; then
  command -v slurmdbd >/dev/null || need+=(slurmdbd)
  command -v mariadbd >/dev/null || need+=(mariadb-server)
fi
if [ ${#need[@]} -gt 0 ]; then
  log "apt-get install ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=120 install -y --no-install-recommends "${need[@]}" >/dev/null 2>&1 || {
    apt-get -o DPkg::Lock::Timeout=120 update >/dev/null 2>&1
    apt-get -o DPkg::Lock::Timeout=120 install -y --no-install-recommends "${need[@]}" >/dev/null
  }
fi

# ---------------------------------------------------------------- dirs
rm -rf "$BASE/state" "$BASE/run"            # fresh cluster every time: job ids start at 1
mkdir -p "$BASE"/{state/ctld,state/spool,run,log,etc}
for n in "${NODES[@]}"; do mkdir -p "$BASE/state/spool/$n"; done
: > "$BASE/log/jobcomp.txt"               # job ids restart at 1: old completion records would answer for new jobs
: > "$PIDFILE"
record() { echo "$1 $2" >> "$PIDFILE"; }

# ---------------------------------------------------------------- munge
if timeout 5 munge -n 2>/dev/null | timeout 5 unmunge >/dev/null 2>&1; then
  log "munged already running (not ours; down.sh will leave it)"
else
  install -d -o munge -g munge -m 0700 /etc/munge /var/log/munge
  install -d -o munge -g munge -m 0711 /var/lib/munge
  install -d -o munge -g munge -m 0755 /run/munge
  if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null \
      || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
  chown munge:munge /etc/munge/munge.key; chmod 0400 /etc/munge/munge.key
  rm -f /run/munge/munged.pid
  runuser -u munge -- /usr/sbin/munged --force
  for _ in $(seq 50); do [ -s /run/munge/munged.pid ] && break; sleep 0.1; done
  record munged "$(cat /run/munge/munged.pid)"
  timeout 5 munge -n | timeout 5 unmunge >/dev/null || die "munge does not work"
fi

# ---------------------------------------------------------------- network
HOSTLINES=()
setup_netns() {
  ip link show "$BRIDGE" >/dev/null 2>&1 || {
    ip link add "$BRIDGE" type bridge && ip addr add "$NET.1/24" dev "$BRIDGE" && ip link set "$BRIDGE" up
  } || return 1
  local i=0 n ns
  for n in "${NODES[@]}"; do
    i=$((i + 1)); ns=$NS_PREFIX$n
    [ -e "/run/netns/$ns" ] || ip netns add "$ns" || return 1
    if ! ip link show "vslab$i" >/dev/null 2>&1; then
      ip link add "vslab$i" type veth peer name eth0 netns "$ns" || return 1
      ip link set "vslab$i" master "$BRIDGE" up
      ip -n "$ns" addr add "$NET.1$i/24" dev eth0
      ip -n "$ns" link set eth0 up
      ip -n "$ns" link set lo up
    fi
  done
}
if [ "$MODE" = netns ]; then
  if setup_netns 2>"$BASE/log/netns.err"; then
    record net netns
    CTLD_ADDR=$NET.1
    i=0; for n in "${NODES[@]}"; do i=$((i + 1)); HOSTLINES+=("$NET.1$i $n"); done
  else
    log "netns setup failed ($(tail -1 "$BASE/log/netns.err")); falling back to MODE=multi"
    MODE=multi
  fi
fi
if [ "$MODE" = multi ]; then
  CTLD_ADDR=127.0.0.1
  i=0; for n in "${NODES[@]}"; do i=$((i + 1)); HOSTLINES+=("127.0.0.1$i $n"); done
fi
record mode "$MODE"
# /etc/hosts: node names must resolve (MASTER_ADDR=n1 etc). Rewrite in place (may be a bind mount).
{ grep -v "$MARK\$" /etc/hosts || true; for l in "${HOSTLINES[@]}"; do echo "$l $MARK"; done; } > "$BASE/etc/hosts.new"
cat "$BASE/etc/hosts.new" > /etc/hosts

# ---------------------------------------------------------------- configs
mkdir -p "$CONF_DIR"
if [ -f "$CONF" ] && ! grep -q '^# slurm-lab' "$CONF"; then
  cp -p "$CONF" "$CONF.pre-slurm-lab"
  log "saved existing $CONF as $CONF.pre-slurm-lab"
fi
GRES_NODE=""
if [ "$GPUS" -gt 0 ]; then GRES_NODE=" Gres=gpu:$GPUS"; fi
{
  echo "# slurm-lab: generated by up.sh ($MODE mode) - do not edit"
  cat <<EOF
ClusterName=$CLUSTER
SlurmctldHost=$(hostname)($CTLD_ADDR)
SlurmctldPort=6817
SlurmdPort=6818
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# requeued jobs may restart after cred_expire s (default 120; min 5)
AuthInfo=cred_expire=10
StateSaveLocation=$BASE/state/ctld
SlurmdSpoolDir=$BASE/state/spool/%n
SlurmctldPidFile=$BASE/run/slurmctld.pid
SlurmdPidFile=$BASE/run/slurmd-%n.pid
SlurmctldLogFile=$BASE/log/slurmctld.log
SlurmdLogFile=$BASE/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
JobCompType=jobcomp/filetxt
JobCompLoc=$BASE/log/jobcomp.txt
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
JobRequeue=1
SlurmdParameters=config_overrides
SlurmctldTimeout=30
SlurmdTimeout=30
KillWait=5
MinJobAge=600
InactiveLimit=0
Waittime=0
EOF
  if [ "$ACCT" = 1 ]; then
    echo "AccountingStorageType=accounting_storage/slurmdbd"
    echo "AccountingStorageHost=127.0.0.1"
    echo "AccountingStoragePort=6819"
  else
    echo "AccountingStorageType=accounting_storage/none"
  fi
  [ "$GPUS" -gt 0 ] && echo "GresTypes=gpu"
  i=0
  for n in "${NODES[@]}"; do
    i=$((i + 1))
    gres=""; [[ " ${GPU_NODES[*]} " == *" $n "* ]] && gres=$GRES_NODE
    if [ "$MODE" = netns ]; then
      echo "NodeName=$n NodeAddr=$NET.1$i CPUs=2 RealMemory=8000$gres State=UNKNOWN"
    else
      echo "NodeName=$n NodeHostname=$(hostname) NodeAddr=127.0.0.1$i Port=1700$i CPUs=2 RealMemory=8000$gres State=UNKNOWN"
    fi
  done
  echo "PartitionName=$PARTITION Nodes=$(IFS=,; echo "${GPU_NODES[*]}") Default=YES MaxTime=INFINITE State=UP"
  echo "PartitionName=$CPU_PARTITION Nodes=$(IFS=,; echo "${CPU_NODES[*]}") MaxTime=$CPU_MAX_TIME MaxNodes=1 State=UP"
} > "$BASE/etc/slurm.conf.new"
mv "$BASE/etc/slurm.conf.new" "$CONF"
if [ "$GPUS" -gt 0 ]; then
  # fake GPUs: gres/gpu drops File-less GPUs ("Removing file-less GPU") and rejects regular files
  # ("is not a valid character or block device"), so make /dev/null-like char devices (c 1 3).
  # Jobs asking --gpus-per-node/--gres=gpu:N get CUDA_VISIBLE_DEVICES=0..N-1 set.
  rm -rf "$BASE/fakegpu"; mkdir -p "$BASE/fakegpu"
  for ((g = 0; g < GPUS; g++)); do mknod "$BASE/fakegpu/gpu$g" c 1 3; done
  echo "# slurm-lab: fake GPUs" > "$CONF_DIR/gres.conf"
  echo "NodeName=$(IFS=,; echo "${GPU_NODES[*]}") Name=gpu File=$BASE/fakegpu/gpu[0-$((GPUS - 1))]" >> "$CONF_DIR/gres.conf"
else
  rm -f "$CONF_DIR/gres.conf"
fi

# ---------------------------------------------------------------- accounting (optional)
if [ "$ACCT" = 1 ]; then
  DB=$BASE/db
  rm -rf "$DB"; mkdir -p "$DB/run"; chown -R mysql:mysql "$DB"
  mariadb-install-db --user=mysql --datadir="$DB/data" --skip-test-db \
    --auth-root-authentication-method=socket > "$BASE/log/mariadb-install.log" 2>&1
  setsid -f /usr/sbin/mariadbd --user=mysql --datadir="$DB/data" --socket="$DB/run/mysqld.sock" \
    --pid-file="$DB/run/mysqld.pid" --bind-address=127.0.0.1 --port=$DB_PORT \
    --innodb-buffer-pool-size=64M --innodb-lock-wait-timeout=900 \
    --log-error="$BASE/log/mariadb.err" < /dev/null > /dev/null 2>&1
  for _ in $(seq 300); do mariadb -S "$DB/run/mysqld.sock" -e 'select 1' >/dev/null 2>&1 && break; sleep 0.1; done
  record mariadbd "$(cat "$DB/run/mysqld.pid")"
  mariadb -S "$DB/run/mysqld.sock" -e "
    CREATE USER 'slurm'@'localhost' IDENTIFIED BY 'slurmlab';
    CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurmlab';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
  cat > "$CONF_DIR/slurmdbd.conf" <<EOF
# slurm-lab: generated by up.sh
AuthType=auth/munge
DbdAddr=127.0.0.1
DbdHost=localhost
DbdPort=6819
SlurmUser=root
DebugLevel=info
LogFile=$BASE/log/slurmdbd.log
PidFile=$BASE/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=slurmlab
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$CONF_DIR/slurmdbd.conf"
  slurmdbd
  for _ in $(seq 300); do (exec 3<>/dev/tcp/127.0.0.1/6819) 2>/dev/null && break; sleep 0.1; done
  record slurmdbd "$(cat "$BASE/run/slurmdbd.pid")"
fi

# ---------------------------------------------------------------- slurm daemons
slurmctld -f "$CONF" -i
for _ in $(seq 100); do [ -s "$BASE/run/slurmctld.pid" ] && break; sleep 0.1; done
record slurmctld "$(cat "$BASE/run/slurmctld.pid")"
for n in "${NODES[@]}"; do
  if [ "$MODE" = netns ]; then
    # nsenter (not `ip netns exec`, which remounts /sys and hides /sys/fs/cgroup: slurmd then dies
    # with "No filesystem mounted on /sys/fs/cgroup"); unshare --uts gives the node its hostname
    nsenter --net="/run/netns/$NS_PREFIX$n" unshare --uts \
      sh -c "hostname $n && exec slurmd -f $CONF -N $n"
  else
    slurmd -f "$CONF" -N "$n"
  fi
done
for n in "${NODES[@]}"; do
  for _ in $(seq 100); do [ -s "$BASE/run/slurmd-$n.pid" ] && break; sleep 0.1; done
  record "slurmd" "$(cat "$BASE/run/slurmd-$n.pid")"
done

# ---------------------------------------------------------------- wait for 2 idle nodes
deadline=$((SECONDS + TIMEOUT)); resumed=0
until nodes_idle; do
  if [ $SECONDS -ge $deadline ]; then
    sinfo -N -o '%N %P %t %G %E' >&2 || true
    tail -n 20 "$BASE"/log/slurmctld.log "$BASE"/log/slurmd-*.log >&2 || true
    die "nodes not idle after ${TIMEOUT}s"
  fi
  # DOWN/DRAIN nodes (e.g. left from a previous run): resume them once
  if [ $resumed = 0 ] && sinfo -h -N -o '%t' 2>/dev/null | grep -qE 'drain|drng|down'; then
    scontrol update NodeName="$(IFS=,; echo "${NODES[*]}")" State=RESUME 2>/dev/null || true
    resumed=1
  fi
  sleep 0.2
done
if [ "$ACCT" = 1 ]; then   # slurmctld registers the cluster in slurmdbd by itself
  for _ in $(seq 100); do sacctmgr -n -P list cluster format=cluster 2>/dev/null | grep -qx "$CLUSTER" && break; sleep 0.2; done
fi
log "cluster up: $(sinfo -h -o '%P %D %t %N' | tr '\n' ' ')(mode=$MODE, pids in $PIDFILE)"
echo "export SLURM_CONF=$CONF"
echo "# SLURM_LAB_UP $MODE $PIDFILE"
