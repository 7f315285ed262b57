#!/usr/bin/env bash
# A real one-host Slurm for trying mpiopt under srun and sbatch: Debian's slurm-wlm and munge.
#
#   deploy/slurm/local-cluster.sh up     # install the packages when missing, start munged, slurmctld, slurmd
#   export SLURM_CONF=$(deploy/slurm/local-cluster.sh conf)
#   srun --mpi=pmi2 -n 4 .venv/bin/python -m mpiopt run ...
#   deploy/slurm/local-cluster.sh down   # stop the three daemons `up` started, remove the state folder
#
# Everything lives in one state folder the script owns (MPIOPT_SLURM_STATE, default
# /tmp/mpiopt-slurm): slurm.conf (one node: this host, its CPU count, partition `debug`), the munge
# key and socket, spool, logs and the daemons' pid files. Nothing under /etc is written; clients find
# the cluster through SLURM_CONF. `down` kills only the pids `up` recorded. Needs root (apt-get, and
# the daemons run as root here). Installed packages stay installed after `down`.
set -euo pipefail

STATE=${MPIOPT_SLURM_STATE:-/tmp/mpiopt-slurm}
CONF=$STATE/slurm.conf
SBIN=/usr/sbin

die() { echo "local-cluster.sh: $*" >&2; exit 1; }

install_missing() {
    if [ -x $SBIN/slurmctld ] && [ -x $SBIN/slurmd ] && [ -x $SBIN/munged ] && command -v srun >/dev/null \
        && compgen -G "/usr/lib/*-linux-gnu/pmix2/lib/libpmix.so" >/dev/null; then
        return
    fi
    # exit 3: the packages are missing and cannot be installed here (tests skip on it, naming why)
    [ "$(id -u)" = 0 ] || { echo "local-cluster.sh: slurm-wlm and munge are not installed and installing them needs root" >&2; exit 3; }
    command -v apt-get >/dev/null || { echo "local-cluster.sh: slurm-wlm and munge are not installed and there is no apt-get" >&2; exit 3; }
    echo "installing slurm-wlm, munge and PMIx (apt-get)" >&2
    # libpmix-dev: Slurm's pmix plugin opens pmix2/lib/libpmix.so, which only the -dev package holds
    if ! { apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            slurm-wlm munge libpmix2 libpmix-dev >&2; }; then
        echo "local-cluster.sh: apt-get could not install slurm-wlm, munge, libpmix2 and libpmix-dev" >&2
        exit 3
    fi
}

write_conf() {
    local host cpus mem
    host=$(hostname -s)
    cpus=$(nproc)
    mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
    mkdir -p "$STATE"/{munge,spool/ctld,spool/d,log,run}
    chmod 700 "$STATE/munge"
    cat > "$CONF" <<EOF
# written by deploy/slurm/local-cluster.sh: one host, $cpus CPUs
ClusterName=mpiopt-local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$STATE/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$STATE/spool/ctld
SlurmdSpoolDir=$STATE/spool/d
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldPort=${MPIOPT_SLURM_PORT:-6817}
SlurmdPort=$(( ${MPIOPT_SLURM_PORT:-6817} + 1 ))
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
SlurmdTimeout=60
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
EOF
}

start_munge() {
    local key=$STATE/munge/munge.key
    [ -f "$key" ] || { dd if=/dev/urandom of="$key" bs=1024 count=1 status=none; chmod 400 "$key"; }
    $SBIN/munged --key-file="$key" --socket="$STATE/munge/munge.socket" --pid-file="$STATE/run/munged.pid" \
        --log-file="$STATE/log/munged.log" --seed-file="$STATE/munge/munge.seed" --force
}

wait_idle() {
    local i
    for i in $(seq 60); do
        if SLURM_CONF=$CONF sinfo -h -o %t 2>/dev/null | grep -q -E '^(idle|mix|alloc)'; then
            return 0
        fi
        sleep 1
    done
    tail -n 20 "$STATE"/log/*.log >&2 || true
    die "the node did not come up in 60 s (logs above, in $STATE/log)"
}

up() {
    [ ! -f "$STATE/run/slurmctld.pid" ] || die "already up ($STATE); run '$0 down' first"
    install_missing
    write_conf
    start_munge
    SLURM_CONF=$CONF $SBIN/slurmctld -f "$CONF"
    SLURM_CONF=$CONF $SBIN/slurmd -f "$CONF"
    wait_idle
    echo "up: $(SLURM_CONF=$CONF srun --version), node $(hostname -s) with $(nproc) CPUs; export SLURM_CONF=$CONF" >&2
}

stop_pid() {  # stop_pid PID NAME: only that pid, and only while it is still NAME; SIGKILL after 10 s
    local pid=$1 name=$2
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ] || return 0
    kill "$pid" 2>/dev/null || return 0
    for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null || true
}

down() {
    local name pid
    for name in slurmd slurmctld munged; do
        [ ! -f "$STATE/run/$name.pid" ] || stop_pid "$(cat "$STATE/run/$name.pid")" "$name"
    done
    # job steps of this cluster's slurmd (they carry its SLURM_CONF), e.g. one stuck in a failed launch
    for pid in $(pgrep -x slurmstepd || true); do
        if tr '\0' '\n' < "/proc/$pid/environ" 2>/dev/null | grep -qx "SLURM_CONF=$CONF"; then
            stop_pid "$pid" slurmstepd
        fi
    done
    rm -rf "$STATE"
    echo "down: stopped what '$0 up' started, removed $STATE" >&2
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    conf) echo "$CONF" ;;
    *) die "usage: $0 up|down|conf" ;;
esac
