#!/usr/bin/env bash
# A one-node SLURM on localhost for the cluster tests (root, no systemd, no cgroups).
#   SLURM_LOCAL_DIR=/tmp/x bash slurm_local.sh start   # then export SLURM_CONF=/tmp/x/slurm.conf
#   SLURM_LOCAL_DIR=/tmp/x bash slurm_local.sh stop    # stops only the daemons it started
# SLURMCTLD_PORT / SLURMD_PORT choose the ports (default 16817/16818).
# Two partitions on the same node: "gpu" (train/explore in the test site) and "cpu" (labels).
set -euo pipefail
D=${SLURM_LOCAL_DIR:?set SLURM_LOCAL_DIR}
start() {
  command -v slurmctld >/dev/null && command -v munged >/dev/null || {
    echo "slurmctld/munged not installed (apt-get install slurm-wlm munge)" >&2; exit 3; }
  mkdir -p "$D"/{state,spool,munge} /run/munge
  chmod 755 "$D"
  chown munge:munge "$D/munge" /run/munge
  [ -s /etc/munge/munge.key ] || mungekey --create --force
  chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
  cat > "$D/slurm.conf" <<EOF
ClusterName=ubmdtest
SlurmctldHost=localhost
# not the default ports (6817/6818), so a site SLURM on this machine is not disturbed
SlurmctldPort=${SLURMCTLD_PORT:-16817}
SlurmdPort=${SLURMD_PORT:-16818}
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool
SlurmctldPidFile=$D/slurmctld.pid
SlurmdPidFile=$D/slurmd.pid
SlurmctldLogFile=$D/slurmctld.log
SlurmdLogFile=$D/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$D/jobcomp.txt
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
KillWait=2
# MinJobAge stays at its default (300 s): parsl polls squeue every 60 s and must still see a
# cancelled job there (no accounting here, so squeue is all it has)
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$(getconf _NPROCESSORS_ONLN) RealMemory=8000 State=UNKNOWN
PartitionName=gpu Nodes=localhost Default=YES MaxTime=INFINITE OverSubscribe=FORCE:4 State=UP
PartitionName=cpu Nodes=localhost MaxTime=INFINITE OverSubscribe=FORCE:4 State=UP
EOF
  export SLURM_CONF="$D/slurm.conf"
  runuser -u munge -- /usr/sbin/munged -F --pid-file="$D/munge/munged.pid" \
    --log-file="$D/munge/munged.log" --seed-file="$D/munge/munged.seed" >"$D/munged.out" 2>&1 &
  echo $! > "$D/munged.bgpid"
  for _ in $(seq 50); do munge -n </dev/null >/dev/null 2>&1 && break; sleep 0.1; done
  munge -n </dev/null >/dev/null || { echo "munged did not start (the munge user must be able"\
    "to reach $D/munge); see $D/munged.out" >&2; exit 4; }
  slurmctld -D >"$D/slurmctld.out" 2>&1 & echo $! > "$D/slurmctld.bgpid"
  slurmd -D -N localhost >"$D/slurmd.out" 2>&1 & echo $! > "$D/slurmd.bgpid"
  for _ in $(seq 150); do sinfo -h -o %t 2>/dev/null | grep -q idle && break; sleep 0.2; done
  sinfo -h -o %t | grep -q idle || { echo "slurm did not come up; see $D/*.log" >&2; exit 4; }
}
stop() {  # only the daemons this script started, by PID; wait for them to exit
  for p in slurmd slurmctld munged; do
    f="$D/$p.bgpid"; [ -f "$f" ] || continue; pid=$(cat "$f")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    rm -f "$f"
  done
  if [ -f "$D/munge/munged.pid" ]; then kill "$(cat "$D/munge/munged.pid")" 2>/dev/null || true; rm -f "$D/munge/munged.pid"; fi
  return 0
}
"${1:-start}"
