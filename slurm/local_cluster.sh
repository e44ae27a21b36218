#!/usr/bin/env bash
# Single-node SLURM cluster on the local machine, from Debian's packages.
#
# What it is for: CI and laptops run the project's SLURM tests (sbatch scripts,
# job arrays, srun steps, requeue handling) against a real scheduler instead of
# a mock. The script installs slurm-wlm + munge (Debian bookworm: slurm 22.05),
# writes /etc/slurm/slurm.conf for this host, starts munged, slurmctld and
# slurmd as plain daemons (no systemd needed) and waits until the node is idle.
#
# Usage (as root):
#   slurm/local_cluster.sh            # install if needed, configure, start, wait for idle
#   slurm/local_cluster.sh --status   # show daemons and sinfo
#   slurm/local_cluster.sh --stop     # kill slurmd, slurmctld and munged
#
# Environment overrides:
#   SLURM_LOCAL_CPUS        CPUs of the node            (default: nproc)
#   SLURM_LOCAL_MEM_MB      RealMemory of the node, MB  (default: MemTotal minus 10%, at least 512 MB headroom)
#   SLURM_LOCAL_PARTITION   name of the default partition (default: debug)
#   SLURM_LOCAL_WAIT_SECS   how long to wait for the node to come up (default: 60)
#
# It is idempotent: re-running it while the daemons run and the node is up
# changes nothing. If the generated slurm.conf differs from the installed one
# (e.g. other overrides), the slurm daemons are restarted to pick it up.
#
# Requeue gotcha: `scontrol requeue <id>` (or a job requeueing itself) puts the
# job back to PENDING with Reason=BeginTime and a BeginTime about 2 minutes in
# the future (slurmctld waits out the job credential lifetime, AuthInfo
# cred_expire, default 120 s, before the job may run again). To release it at
# once:  scontrol update JobId=<id> StartTime=now
# (Lowering AuthInfo=cred_expire shortens the BeginTime, but the job then still
# waits for the next periodic scheduler pass; the update above starts it at once.)
set -euo pipefail

export PATH="/usr/sbin:/sbin:$PATH"
export DEBIAN_FRONTEND=noninteractive

SLURM_CONF=/etc/slurm/slurm.conf
MUNGE_KEY=/etc/munge/munge.key
LOG_DIR=/var/log/slurm
CTLD_STATE=/var/spool/slurmctld
SLURMD_SPOOL=/var/spool/slurmd
WAIT_SECS=${SLURM_LOCAL_WAIT_SECS:-60}

HOST=$(hostname -s)

log() { echo "[local_cluster] $*"; }

die() {
    echo "[local_cluster] ERROR: $*" >&2
    local f
    for f in "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log" /var/log/munge/munged.log; do
        if [[ -f $f ]]; then
            echo "----- tail of $f -----" >&2
            tail -n 30 "$f" >&2 || true
        fi
    done
    exit 1
}

running() { pgrep -x "$1" >/dev/null 2>&1; }

stop_daemon() {
    local name=$1 pids i
    pids=$(pgrep -x "$name" || true)
    [[ -z $pids ]] && return 0
    log "stopping $name (pid $(echo $pids))"
    # shellcheck disable=SC2086
    kill $pids 2>/dev/null || true
    for ((i = 0; i < 20; i++)); do
        running "$name" || return 0
        sleep 0.5
    done
    pids=$(pgrep -x "$name" || true)
    # shellcheck disable=SC2086
    [[ -n $pids ]] && kill -9 $pids 2>/dev/null || true
}

stop_all() {
    stop_daemon slurmd
    stop_daemon slurmctld
    stop_daemon munged
}

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null &&
        command -v munged >/dev/null && command -v sbatch >/dev/null; then
        return 0
    fi
    log "installing slurm-wlm and munge"
    if ! apt-get install -y -q slurm-wlm munge; then
        log "install failed; running apt-get update and retrying"
        apt-get update -q
        apt-get install -y -q slurm-wlm munge
    fi
    command -v slurmctld >/dev/null || die "slurmctld not found after install"
}

start_munge() {
    getent passwd munge >/dev/null || die "no munge user (munge package not installed?)"
    install -d -m 0700 -o munge -g munge /etc/munge
    # Debian's postinst creates a 128-byte key; use 1024 random bytes instead, but
    # never swap the key under a running munged (it keeps the old one in memory).
    if [[ ! -s $MUNGE_KEY ]] || { [[ $(stat -c %s "$MUNGE_KEY") -ne 1024 ]] && ! running munged; }; then
        log "creating munge key $MUNGE_KEY (1024 random bytes)"
        rm -f "$MUNGE_KEY"
        (umask 077 && head -c 1024 /dev/urandom >"$MUNGE_KEY")
    fi
    chown munge:munge "$MUNGE_KEY"
    chmod 0400 "$MUNGE_KEY"
    install -d -m 0755 -o munge -g munge /run/munge
    install -d -m 0700 -o munge -g munge /var/lib/munge
    install -d -m 0700 -o munge -g munge /var/log/munge
    if ! running munged; then
        log "starting munged"
        runuser -u munge -- munged || die "munged failed to start"
    fi
    local i
    for ((i = 0; i < 20; i++)); do
        if munge -n 2>/dev/null | unmunge 2>/dev/null | grep -q 'STATUS: *Success'; then
            return 0
        fi
        sleep 0.5
    done
    die "munge -n | unmunge does not report Success"
}

write_conf() {
    local cpus mem_mb part total_mb headroom
    cpus=${SLURM_LOCAL_CPUS:-$(nproc)}
    total_mb=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
    headroom=$((total_mb / 10))
    ((headroom < 512)) && headroom=512
    mem_mb=$((total_mb - headroom))
    ((mem_mb >= 256)) || mem_mb=256
    mem_mb=${SLURM_LOCAL_MEM_MB:-$mem_mb}
    part=${SLURM_LOCAL_PARTITION:-debug}
    [[ $cpus =~ ^[1-9][0-9]*$ ]] || die "SLURM_LOCAL_CPUS must be a positive integer, got '$cpus'"
    [[ $mem_mb =~ ^[1-9][0-9]*$ ]] || die "SLURM_LOCAL_MEM_MB must be a positive integer, got '$mem_mb'"
    [[ $part =~ ^[A-Za-z0-9_.-]+$ ]] || die "SLURM_LOCAL_PARTITION must be a plain name, got '$part'"

    install -d -m 0755 /etc/slurm "$LOG_DIR" "$CTLD_STATE" "$SLURMD_SPOOL"

    local tmp
    tmp=$(mktemp)
    cat >"$tmp" <<EOF
# Generated by slurm/local_cluster.sh: single-node cluster on $HOST.
ClusterName=local
SlurmctldHost=$HOST
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmUser=root
SlurmdUser=root
ReturnToService=2
# Node definition below wins over what slurmd detects (lets CPUs/memory be overridden).
SlurmdParameters=config_overrides
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
# Debian has no /bin/mail by default; avoid the "MailProg is invalid" error.
MailProg=/bin/true
# Keep finished jobs visible to squeue/scontrol for 5 minutes (there is no accounting DB).
MinJobAge=300
KillWait=10
# A requeued job (scontrol requeue) gets BeginTime about 2 minutes out (credential
# lifetime, AuthInfo cred_expire default 120 s); release it right away with:
#   scontrol update JobId=<id> StartTime=now
StateSaveLocation=$CTLD_STATE
SlurmdSpoolDir=$SLURMD_SPOOL
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=$part Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    if [[ -f $SLURM_CONF ]] && cmp -s "$tmp" "$SLURM_CONF"; then
        rm -f "$tmp"
        CONF_CHANGED=0
    else
        log "writing $SLURM_CONF (NodeName=$HOST CPUs=$cpus RealMemory=$mem_mb, partition $part)"
        install -m 0644 "$tmp" "$SLURM_CONF"
        rm -f "$tmp"
        CONF_CHANGED=1
    fi
}

slurmd_registered_since() {
    local t
    t=$(scontrol show node "$HOST" 2>/dev/null | sed -n 's/.*SlurmdStartTime=\([^ ]*\).*/\1/p')
    [[ -n $t && $t != None ]] || return 1
    t=$(date -d "$t" +%s 2>/dev/null) || return 1
    ((t >= $1))
}

node_state() {
    sinfo -h -N -n "$HOST" -o %t 2>/dev/null | head -n 1 || true
}

# Start a daemon if it is not running; allow at most 2 starts per run.
declare -A STARTS=()
ensure_daemon() {
    local name=$1
    running "$name" && return 0
    local n=${STARTS[$name]:-0}
    ((n < 2)) || die "$name is not running (exited after start)"
    STARTS[$name]=$((n + 1))
    log "starting $name"
    if [[ $name == slurmd ]]; then
        SLURMD_T0=$(($(date +%s) - 1))
    fi
    "$name" || die "$name failed to start"
}

start_slurm() {
    if ((CONF_CHANGED)) && { running slurmctld || running slurmd; }; then
        log "slurm.conf changed; restarting slurm daemons"
        stop_daemon slurmd
        stop_daemon slurmctld
    fi
    # If slurmd is (re)started now, slurmctld's saved node state may read "idle"
    # before the new slurmd has registered: then also wait for its SlurmdStartTime.
    SLURMD_T0=0
    local start state resumed=0
    start=$SECONDS
    while true; do
        ensure_daemon slurmctld
        ensure_daemon slurmd
        state=$(node_state)
        if ((SLURMD_T0)) && [[ -n $state ]] && ! slurmd_registered_since "$SLURMD_T0"; then
            state="$state (slurmd not registered yet)"
        elif ! scontrol show slurmd >/dev/null 2>&1; then
            state="$state (local slurmd not answering)"
        fi
        case $state in
            idle | mix | mixed | alloc | allocated | comp | completing)
                log "node $HOST is $state after $((SECONDS - start)) s"
                return 0
                ;;
            down | drain | drng | draining | drained | fail)
                # Responding but down/drained (e.g. stale saved state): put it back.
                if ((resumed < 3)); then
                    log "node $HOST is $state; resuming it"
                    scontrol update NodeName="$HOST" State=RESUME || true
                    resumed=$((resumed + 1))
                fi
                ;;
        esac
        if ((SECONDS - start >= WAIT_SECS)); then
            sinfo -N -l >&2 || true
            die "node $HOST did not become idle within ${WAIT_SECS} s (state: '${state:-?}')"
        fi
        sleep 1
    done
}

status() {
    local d
    for d in munged slurmctld slurmd; do
        if running "$d"; then echo "$d: running (pid $(pgrep -x "$d" | tr '\n' ' '))"; else echo "$d: stopped"; fi
    done
    if running slurmctld; then sinfo; fi
}

main() {
    case ${1:-} in
        --stop)
            stop_all
            exit 0
            ;;
        --status)
            status
            exit 0
            ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
            exit 0
            ;;
        "") ;;
        *)
            echo "unknown argument: $1 (use --stop, --status or no argument)" >&2
            exit 2
            ;;
    esac
    [[ $(id -u) -eq 0 ]] || die "must run as root"
    install_packages
    start_munge
    CONF_CHANGED=0
    write_conf
    start_slurm
}

main "$@"
