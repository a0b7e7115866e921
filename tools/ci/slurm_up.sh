#!/usr/bin/env bash
# A one-node Slurm cluster on this machine for the tests marked `slurm` (Debian 12's Slurm 22.05, no accounting).
#   bash tools/ci/slurm_up.sh          install slurmctld/slurmd/munge if missing, write slurm.conf, start the
#                                      daemons; a cluster already up is reused. Prints one status line.
#   bash tools/ci/slurm_up.sh --stop   stop the daemons it started, by their pid files
# Partitions: `cpu` (default) and `high`, a higher PriorityTier on the same node, so a job submitted to `high`
# preempts (SIGTERM, KillWait, requeue) what runs in `cpu`: a real preemption. Accounting is off
# (accounting_storage/none), the set-up of many small clusters: the tools must work from squeue alone.
# The daemons run as root with proctrack/linuxproc and task/none: cgroup plugins do not work in containers.
# An /etc/slurm/slurm.conf that this script did not write is never overwritten.
set -euo pipefail
RUN=/run/fastsiam-slurm           # pid files and logs
SPOOL=/var/spool/fastsiam-slurm   # slurmctld state and slurmd spool
CONF=/etc/slurm/slurm.conf
MARK="# written by fastsiam tools/ci/slurm_up.sh"

stop() {
    local name pid stopped=()
    for name in slurmd slurmctld munged; do
        [ -f "$RUN/$name.pid" ] || continue
        pid=$(cat "$RUN/$name.pid")
        # only a process that is that daemon: a stale pid file must not kill whatever reused the pid
        if [ -n "$pid" ] && grep -q "$name" "/proc/$pid/comm" 2>/dev/null; then
            kill "$pid"
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            stopped+=("$name")
        fi
        rm -f "$RUN/$name.pid"
    done
    echo "slurm: stopped ${stopped[*]:-nothing (no daemon of ours was running)}"
}

if [ "${1:-}" = "--stop" ]; then
    stop
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "slurm: tools/ci/slurm_up.sh runs the daemons as root; run it as root (CI does)" >&2
    exit 1
fi
if scontrol ping 2>/dev/null | grep -q "is UP" && sinfo -h -o %T 2>/dev/null | grep -qE "idle|mix|alloc"; then
    echo "slurm: already up ($(sinfo -h -o '%P %c CPUs %m MB' | tr '\n' ' '))"
    exit 0
fi
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
        || ! command -v munged >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update -q && apt-get install -y -q slurmctld slurmd slurm-client munge; } >/dev/null
fi
if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
    echo "slurm: $CONF was not written by this script; start that cluster yourself" >&2
    exit 1
fi

mkdir -p "$RUN" "$SPOOL/ctld" "$SPOOL/d" /run/munge /var/log/munge /var/lib/munge /etc/munge
host=$(hostname -s)
read -r cpus mem < <(slurmd -C | awk '/^NodeName/ {for (i = 1; i <= NF; i++) {split($i, kv, "=");
    if (kv[1] == "CPUs") c = kv[2]; if (kv[1] == "RealMemory") m = kv[2]}} END {print c, m}')
avail=$(awk '/MemAvailable/ {print int($2 / 1024)}' /proc/meminfo)
# a bit under what is free: slurmd drains a node whose configured memory exceeds what it finds
mem=$(( (avail < mem ? avail : mem) * 9 / 10 ))
cat > "$CONF" <<EOF
$MARK
ClusterName=fastsiam-ci
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$SPOOL/ctld
SlurmdSpoolDir=$SPOOL/d
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$RUN/slurmctld.log
SlurmdLogFile=$RUN/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
# Slurm's default KillWait (30 s) is what a preempted job has to write its checkpoint; shorter here for speed
KillWait=10
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
MinJobAge=300
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=cpu Nodes=$host Default=YES MaxTime=60 PriorityTier=1 State=UP
PartitionName=high Nodes=$host MaxTime=60 PriorityTier=10 State=UP
EOF
[ -s /etc/munge/munge.key ] || { dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null;
                                 chmod 400 /etc/munge/munge.key; }
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    # its warnings (log-folder ownership in a container) go to its log, not the status line
    munged --force --pid-file="$RUN/munged.pid" --log-file="$RUN/munged.log" 2>>"$RUN/munged.log"
fi
slurmctld
slurmd
for _ in $(seq 60); do
    if sinfo -h -o %T 2>/dev/null | grep -qE "^(idle|mix|alloc)"; then
        echo "slurm: up on $host ($cpus CPUs, $mem MB; partitions cpu, high; no accounting; logs in $RUN)"
        exit 0
    fi
    sleep 0.5
done
echo "slurm: the node did not come up: $(sinfo -h -N -o '%T %E' 2>&1 | head -1); see $RUN/slurmd.log" >&2
exit 1
