#!/usr/bin/env bash
# (ftlaunch copy: slurm/dev/check.sh; usage: bash slurm/dev/check.sh .venv/bin/python)
# check.sh - prove the cluster from up.sh works: 2-node sbatch/srun env, hostnames, cross-node
# TCP, scancel, requeue, signals, sacct (if accounting), submitit (if $PY has it).
# Usage: check.sh [python-with-submitit]     Exit 0 = all PASS.
set -uo pipefail
W=${SLURM_LAB_CHECK_DIR:-/tmp/ftl-slurm-check}
PY=${1:-}
rm -rf "$W"; mkdir -p "$W"; cd "$W" || exit 1
fails=0
pass() { echo "PASS $*"; }
fail() { echo "FAIL $*"; fails=$((fails + 1)); }
now() { date +%s.%N; }
wait_gone() { # jobid timeout_s
  local end=$((SECONDS + ${2:-60}))
  while [ -n "$(squeue -h -j "$1" 2>/dev/null)" ]; do [ $SECONDS -ge $end ] && return 1; sleep 0.1; done
}
wait_state() { # jobid state timeout_s
  local end=$((SECONDS + ${3:-60}))
  until [ "$(squeue -h -j "$1" -o %T 2>/dev/null)" = "$2" ]; do [ $SECONDS -ge $end ] && return 1; sleep 0.1; done
}

# 1. sinfo
[ "$(sinfo -h -N -p debug -o '%N %t' | grep -c ' idle$')" = 2 ] && pass "sinfo: 2 idle nodes in debug" || fail "sinfo: $(sinfo -h -N -o '%N %t' | tr '\n' ' ')"

# 2. 2-node batch job: srun env, node ids, hostnames
cat > hello.sh <<'EOF'
#!/bin/bash
#SBATCH --job-name=hello
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --output=%x-%j.out
scontrol show hostnames "$SLURM_JOB_NODELIST" | paste -sd' ' | sed 's/^/HOSTNAMES /'
srun bash -c 'echo "TASK nodeid=$SLURM_NODEID procid=$SLURM_PROCID localid=$SLURM_LOCALID nodename=$SLURMD_NODENAME hostname=$(hostname) nodelist=$SLURM_JOB_NODELIST ntasks=$SLURM_NTASKS"'
EOF
t0=$(now); jid=$(sbatch --parsable hello.sh); wait_gone "$jid" 60; t1=$(now)
echo "TIMING sbatch->done (2-node, 1 srun step): $(echo "$t1 - $t0" | bc) s"
out=hello-$jid.out
grep -q '^HOSTNAMES n1 n2$' "$out" && pass "scontrol show hostnames" || fail "hostnames: $(cat "$out")"
grep -q 'TASK nodeid=0 procid=0 localid=0 nodename=n1 .*nodelist=n\[1-2\] ntasks=2' "$out" \
  && grep -q 'TASK nodeid=1 procid=1 localid=0 nodename=n2 .*nodelist=n\[1-2\] ntasks=2' "$out" \
  && pass "srun: SLURM_NODEID/PROCID/JOB_NODELIST" || fail "srun env: $(cat "$out")"
grep TASK "$out" | sed 's/^/   /'

# 3. cross-node TCP (what torchrun/accelerate rendezvous needs): rank 0 listens on n1, rank 1 connects to "n1"
cat > tcp.sh <<'EOF'
#!/bin/bash
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --output=tcp-%j.out
export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1) MASTER_PORT=29511
srun python3 - <<'PY'
import os, socket, time
r = int(os.environ["SLURM_PROCID"])
if r == 0:
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", int(os.environ["MASTER_PORT"]))); s.listen(1)
    c, a = s.accept(); print("RANK0 got", c.recv(100).decode(), "from", a[0], flush=True)
else:
    for _ in range(100):
        try:
            c = socket.create_connection((os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])), 2); break
        except OSError: time.sleep(0.1)
    c.sendall(("hello from " + socket.gethostname()).encode()); print("RANK1 sent", flush=True)
PY
EOF
jid=$(sbatch --parsable tcp.sh); wait_gone "$jid" 60
grep -q 'RANK0 got hello from' "tcp-$jid.out" && pass "cross-node TCP via MASTER_ADDR: $(grep RANK0 "tcp-$jid.out")" || fail "tcp: $(cat "tcp-$jid.out")"

# 4. squeue + scancel of a running 2-node job
cat > long.sh <<'EOF'
#!/bin/bash
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --output=long-%j.out
#SBATCH --open-mode=append
echo "START restart_count=${SLURM_RESTART_COUNT:-0}"
srun sleep 300
EOF
jid=$(sbatch --parsable long.sh)
if wait_state "$jid" RUNNING 30; then
  pass "squeue: $(squeue -h -j "$jid" -o '%i %T %D %N')"
  t0=$(now); scancel "$jid"; wait_gone "$jid" 30 && pass "scancel: gone in $(echo "$(now) - $t0" | bc) s" || fail "scancel"
else fail "long job never RUNNING"; fi

# 5. scontrol requeue of a running job (JobRequeue=1; restart delay = cred_expire)
jid=$(sbatch --parsable long.sh)
wait_state "$jid" RUNNING 30 && sleep 1
t0=$(now); scontrol requeue "$jid"
if wait_state "$jid" RUNNING 60; then
  sleep 1
  grep -q 'START restart_count=1' "long-$jid.out" && pass "requeue: running again after $(echo "$(now) - $t0" | bc) s, SLURM_RESTART_COUNT=1" || fail "requeue: $(cat "long-$jid.out")"
else fail "requeue: not running again within 60 s"; fi
scancel "$jid"; wait_gone "$jid" 30

# 6. signals: immediate (scancel -s USR1 -b) and time-based (--signal=B:USR1@55 with --time=1)
cat > sig.sh <<'EOF'
#!/bin/bash
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --output=sig-%j.out
#SBATCH --time=1
#SBATCH --signal=B:USR1@55
t0=$(date +%s)
trap 'echo "USR1 after $(( $(date +%s) - t0 ))s"; touch usr1-$SLURM_JOB_ID; exit 0' USR1
srun sleep 120 &
wait
EOF
jid=$(sbatch --parsable sig.sh); wait_state "$jid" RUNNING 30; sleep 1
scancel --signal=USR1 --batch "$jid"; wait_gone "$jid" 30
[ -e "usr1-$jid" ] && pass "scancel --signal=USR1 --batch: $(grep USR1 "sig-$jid.out")" || fail "scancel -s USR1: $(cat "sig-$jid.out")"
if [ "${SLURM_LAB_QUICK:-0}" != 1 ]; then
  jid=$(sbatch --parsable sig.sh); wait_gone "$jid" 90
  [ -e "usr1-$jid" ] && pass "--signal=B:USR1@55 (--time=1): $(grep USR1 "sig-$jid.out")" || fail "--signal@: $(cat "sig-$jid.out")"
fi

# 6b. --export=NONE job: SLURM_CONF must come from slurmd so srun inside works without our env
cat > noenv.sh <<'EOF2'
#!/bin/bash
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --export=NONE
#SBATCH --output=noenv-%j.out
echo "CONF=$SLURM_CONF PATH=${PATH:-unset}"
srun /bin/hostname
EOF2
jid=$(sbatch --parsable noenv.sh); wait_gone "$jid" 60
[ "$(grep -c -E '^(n1|n2|vm)$' "noenv-$jid.out")" = 2 ] && pass "--export=NONE job: $(head -n1 "noenv-$jid.out"), srun ok" || fail "--export=NONE: $(cat "noenv-$jid.out")"

# 6c. fake GPUs (SLURM_LAB_GPUS>0): --gpus-per-node is accepted and CUDA_VISIBLE_DEVICES is set
if sinfo -h -o %G | grep -q gpu; then
  jid=$(sbatch --parsable --nodes=2 --ntasks-per-node=1 --gpus-per-node=2 --output="gpu-%j.out" \
        --wrap 'srun bash -c "echo GPU \$SLURMD_NODENAME CUDA_VISIBLE_DEVICES=\$CUDA_VISIBLE_DEVICES"')
  wait_gone "$jid" 60
  [ "$(grep -c 'CUDA_VISIBLE_DEVICES=0,1' "gpu-$jid.out")" = 2 ] && pass "--gpus-per-node=2: $(grep GPU "gpu-$jid.out" | sort | tr '\n' ';')" || fail "gpus: $(cat "gpu-$jid.out")"
fi

# 7. accounting
if sacct -n -X -j 1 >/dev/null 2>&1; then
  sacct -X -P -o JobID,JobName,State,ExitCode,NNodes -j 1,2 | sed 's/^/   /'
  pass "sacct (slurmdbd)"
else
  sacct -c -P -o JobID,JobName,State,NodeList 2>/dev/null | head -n 3 | sed 's/^/   /'
  echo "INFO sacct: accounting storage disabled; 'sacct -c' (jobcomp/filetxt) works"
fi

# 8. submitit
if [ -n "$PY" ] && "$PY" -c 'import submitit' 2>/dev/null; then
  "$PY" - "$W/submitit" <<'PY' && pass "submitit" || fail "submitit"
import os, socket, sys, time, submitit
def work(x):
    env = submitit.JobEnvironment()
    tde = submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    return (x * 2, socket.gethostname(), env.global_rank, env.node, env.hostnames,
            {k: os.environ[k] for k in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")})
ex = submitit.AutoExecutor(folder=sys.argv[1] + "/%j")
ex.update_parameters(slurm_partition="debug", nodes=2, tasks_per_node=1, timeout_min=5)
t0 = time.time(); job = ex.submit(work, 21); res = job.results()
print("   submitit job %s: %.2fs, state=%s" % (job.job_id, time.time() - t0, job.get_info(mode="force").get("State")))
for r in res: print("  ", r)
assert [r[0] for r in res] == [42, 42] and sorted(r[2] for r in res) == [0, 1]
assert all(r[5]["MASTER_ADDR"] == "n1" and r[5]["WORLD_SIZE"] == "2" for r in res)
PY
else
  echo "INFO submitit: skipped (no python with submitit given)"
fi

echo "CHECK DONE: $fails failure(s)"
[ $fails = 0 ]
