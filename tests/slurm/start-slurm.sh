#!/bin/bash
# Start a real single-node Slurm cluster (munged + slurmctld + slurmd) for vidcap's cluster test, as root.
#   usage: start-slurm.sh STATE_DIR
# Needs: apt-get install -y slurm-wlm munge   (scripts/install.sh --test; this script installs nothing)
# Writes /etc/slurm/slurm.conf + /etc/slurm/gres.conf (the job-step side only reads /etc/slurm),
# keeps all state, spool, logs, pid files, the munge socket and a stand-in GPU device in STATE_DIR.
# One node `localhost` (CPUs = nproc, Gres=gpu:1) in two partitions, `cpu` (default) and `gpu`, so a
# test can see from Slurm's job records which partition each rule went to. Stop with stop-slurm.sh STATE_DIR.
# Adapted from the verified shared/reference/slurm scripts (only the partitions differ).
set -euo pipefail

die() { echo "start-slurm: $*" >&2; exit 1; }
[ $# -eq 1 ] || die "usage: $0 STATE_DIR"
[ "$(id -u)" -eq 0 ] || die "must run as root"

missing=""
for b in munged munge unmunge slurmctld slurmd sinfo scontrol squeue sbatch scancel mknod runuser; do
    command -v "$b" >/dev/null 2>&1 || missing="$missing $b"
done
[ -z "$missing" ] || die "missing binaries:$missing
  install them first:  apt-get install -y slurm-wlm munge"

STATE=$(realpath -m "$1")
MARK="$STATE/.slurm-local-state"
CONF=/etc/slurm/slurm.conf
GRES=/etc/slurm/gres.conf
TAG="# written by start-slurm.sh for STATE_DIR=$STATE"
SOCK="$STATE/munge/munge.socket.2"

alive() {  # alive PIDFILE COMM -> true if the pid in PIDFILE runs a process named COMM
    local pid
    [ -s "$1" ] || return 1
    pid=$(cat "$1" 2>/dev/null) || return 1
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [ "$(cat /proc/"$pid"/comm 2>/dev/null)" = "$2" ]
}

# --- refuse to run twice / next to another cluster ------------------------------------------
alive "$STATE/slurmctld.pid" slurmctld && die "a slurmctld from $STATE is already running (pid $(cat "$STATE/slurmctld.pid")); run stop-slurm.sh $STATE first"
for d in slurmctld slurmd; do   # detection only; exited-but-unreaped (zombie) daemons do not count
    p=""
    for f in /proc/[0-9]*/comm; do
        [ "$(cat "$f" 2>/dev/null)" = "$d" ] || continue
        pid=${f#/proc/}; pid=${pid%/comm}
        [ "$(awk '{print $3}' /proc/"$pid"/stat 2>/dev/null)" = "Z" ] || p="$p $pid"
    done
    [ -z "$p" ] || die "another $d is already running (pid(s)$p); /etc/slurm and ports 6817/6818 are shared, stop it first"
done
if [ -d "$STATE" ] && [ ! -e "$MARK" ] && [ -n "$(ls -A "$STATE")" ]; then
    die "$STATE exists, is not empty and was not made by this script; give an empty or new directory"
fi
[ ${#SOCK} -lt 100 ] || die "STATE_DIR path too long for a unix socket ($SOCK); use a shorter one"

# --- fresh state dir (the .etc-backup of a crashed run is kept) -------------------------------
mkdir -p "$STATE"
chmod 755 "$STATE"
echo "slurm-local-state" > "$MARK"
rm -rf "$STATE"/ctld "$STATE"/spool "$STATE"/log "$STATE"/dev "$STATE"/munge "$STATE"/*.pid
mkdir -p "$STATE"/ctld "$STATE"/spool "$STATE"/log "$STATE"/dev "$STATE"/munge
chown munge:munge "$STATE/munge"
chmod 755 "$STATE/munge"

# --- munge key ----------------------------------------------------------------------------
if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    if command -v mungekey >/dev/null 2>&1; then
        mungekey --create --keyfile=/etc/munge/munge.key --force
    else
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    echo "created /etc/munge/munge.key"
fi
chown munge:munge /etc/munge /etc/munge/munge.key
chmod 700 /etc/munge
chmod 400 /etc/munge/munge.key

# --- node resources -------------------------------------------------------------------------
CPUS=$(nproc)
MEM_MB=$(( $(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 ))
HEADROOM=$(( MEM_MB / 10 )); [ "$HEADROOM" -ge 512 ] || HEADROOM=512
REAL_MB=$(( MEM_MB - HEADROOM )); [ "$REAL_MB" -ge 256 ] || REAL_MB=256

# stand-in GPU: a char device like /dev/null (a gres without File= is dropped and the node drains)
GPU_DEV="$STATE/dev/gpu0"
if mknod "$GPU_DEV" c 1 3 2>/dev/null; then
    chmod 666 "$GPU_DEV"
else
    echo "start-slurm: warning: mknod not permitted here, using /dev/null as the stand-in GPU device" >&2
    GPU_DEV=/dev/null
fi

# --- configs in /etc/slurm (back up foreign ones once, restored by stop-slurm.sh) --------------
mkdir -p /etc/slurm "$STATE/.etc-backup"
for f in "$CONF" "$GRES"; do
    if [ -e "$f" ] && ! grep -q '^# written by start-slurm.sh' "$f" && [ ! -e "$STATE/.etc-backup/$(basename "$f")" ]; then
        cp -p "$f" "$STATE/.etc-backup/"
        echo "backed up $f to $STATE/.etc-backup/"
    fi
done

cat > "$CONF" <<CONF
$TAG
ClusterName=localcluster
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$SOCK
CredType=cred/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
SlurmctldPort=6817
SlurmdPort=6818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
DefMemPerCPU=256
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
ReturnToService=2
# finished jobs stay visible to squeue this long; the snakemake slurm plugin needs
# MinJobAge >= 3 x init-seconds-before-status-checks, else it falls back to sacct (hangs without slurmdbd)
MinJobAge=600
KillWait=5
InactiveLimit=0
NodeName=localhost CPUs=$CPUS RealMemory=$REAL_MB Gres=gpu:1 State=UNKNOWN
PartitionName=cpu Nodes=localhost Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=localhost MaxTime=INFINITE State=UP
CONF

cat > "$GRES" <<CONF
$TAG
AutoDetect=off
NodeName=localhost Name=gpu File=$GPU_DEV
CONF

# --- daemons ----------------------------------------------------------------------------------
wait_pidfile() {  # wait_pidfile PIDFILE COMM SECONDS
    local i
    for i in $(seq 1 $(( $3 * 10 ))); do
        alive "$1" "$2" && return 0
        sleep 0.1
    done
    return 1
}
show_logs() {
    for f in "$STATE"/munge/munged.log "$STATE"/log/slurmctld.log "$STATE"/log/slurmd.log; do
        [ -e "$f" ] && { echo "--- tail $f" >&2; tail -n 20 "$f" >&2; }
    done
    return 0
}
fail() {
    echo "start-slurm: $*" >&2
    show_logs
    echo "start-slurm: stopping what was started (stop-slurm.sh)" >&2
    bash "$(dirname "$0")/stop-slurm.sh" "$STATE" >&2 || true
    exit 1
}

runuser -u munge -- munged --socket="$SOCK" --key-file=/etc/munge/munge.key \
    --pid-file="$STATE/munge/munged.pid" --log-file="$STATE/munge/munged.log" \
    --seed-file="$STATE/munge/munged.seed" || fail "munged failed to start"
wait_pidfile "$STATE/munge/munged.pid" munged 10 || fail "munged did not write its pid file"
munge -n -S "$SOCK" | unmunge -S "$SOCK" >/dev/null || fail "munge credential round trip failed"

slurmctld || fail "slurmctld failed to start"
wait_pidfile "$STATE/slurmctld.pid" slurmctld 15 || fail "slurmctld did not come up"
slurmd -N localhost || fail "slurmd failed to start"
wait_pidfile "$STATE/slurmd.pid" slurmd 15 || fail "slurmd did not come up"

state=""
for i in $(seq 1 60); do   # 30 s
    state=$(timeout 5 sinfo -h -n localhost -o %T 2>/dev/null | head -n1 || true)
    [ "$state" = "idle" ] && break
    case "$state" in drain*|down*|inval*|fail*)
        timeout 5 sinfo -R >&2 || true
        fail "node localhost is '$state'";;
    esac
    sleep 0.5
done
[ "$state" = "idle" ] || fail "node not idle after 30 s (state: '${state:-no answer}')"

timeout 5 sinfo
echo "slurm up: munged=$(cat "$STATE/munge/munged.pid") slurmctld=$(cat "$STATE/slurmctld.pid") slurmd=$(cat "$STATE/slurmd.pid")"
echo "node localhost: CPUs=$CPUS RealMemory=${REAL_MB}M Gres=gpu:1 (File=$GPU_DEV); partitions cpu (default), gpu; stop with: stop-slurm.sh $STATE"
