#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, with accounting, for tests, CI and trying things out.
#
#   scripts/local_slurm.sh install   apt-get the packages (Debian 12: munge, slurmctld, slurmd,
#                                    slurm-client, slurmdbd, mariadb-server); run once, as root
#   scripts/local_slurm.sh start     write the configs, start munged, mariadbd, slurmdbd, slurmctld,
#                                    slurmd in that order, each polled until ready (bounded)
#   scripts/local_slurm.sh stop      stop every daemon by the PID in its pid file, wait, remove the file
#   scripts/local_slurm.sh status    which daemons run; the node's state (exit 0 when all are up)
#
# All commands are idempotent. Configs, logs and SLURM state live under $NDT_SLURM_DIR (default
# /var/lib/ndt-slurm). /etc/slurm/slurm.conf and slurmdbd.conf are linked there when no other
# SLURM config exists, so that sbatch/sinfo/sacct (and submitit) find the cluster without
# SLURM_CONF; with a config of your own in /etc/slurm, export the SLURM_CONF that `start` prints.
# One partition, `debug`, with every CPU of the machine and no GPU. The facts behind each step
# (why accounting is needed, the start order, stale pid files) are in ../shared/notes/slurm.md.
set -euo pipefail

STATE_DIR=${NDT_SLURM_DIR:-/var/lib/ndt-slurm}
READY_TIMEOUT_S=${NDT_SLURM_TIMEOUT_S:-60}  # bound on each readiness poll and on each daemon's exit
CLUSTER=ndt
DB_NAME=slurm_acct_db
DB_USER=slurm

ETC=$STATE_DIR/etc
RUN=$STATE_DIR/run
LOG=$STATE_DIR/log
export SLURM_CONF=$ETC/slurm.conf  # daemons and clients started here read our config

# Pid files, in start order; each daemon writes its own (mariadbd and munged where their packages expect).
MUNGED_PID=/run/munge/munged.pid
MARIADBD_PID=/run/mysqld/mysqld.pid
SLURMDBD_PID=$RUN/slurmdbd.pid
SLURMCTLD_PID=$RUN/slurmctld.pid
SLURMD_PID=$RUN/slurmd.pid
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)
declare -A PIDFILE=([munged]=$MUNGED_PID [mariadbd]=$MARIADBD_PID [slurmdbd]=$SLURMDBD_PID
    [slurmctld]=$SLURMCTLD_PID [slurmd]=$SLURMD_PID)

PACKAGES=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server)

log() { printf '[local_slurm] %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

need_root() {
    [[ $(id -u) -eq 0 ]] || die "run as root: the daemons start as root and drop to their own users"
}

# wait_until DESCRIPTION COMMAND...: poll COMMAND (quietly) every 0.2 s until it succeeds, at most
# READY_TIMEOUT_S seconds; on time-out say which log to read.
wait_until() {
    local what=$1
    shift
    local deadline=$((SECONDS + READY_TIMEOUT_S))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            die "$what not ready after ${READY_TIMEOUT_S}s (logs: $LOG/)"
        fi
        sleep 0.2
    done
}

# alive PID: PID is a running process. A killed daemon whose parent has not reaped it yet (its parent
# is PID 1, which may be slow to) is a zombie: kill -0 still succeeds, so read its state too.
alive() {
    [[ -n $1 ]] && kill -0 "$1" 2>/dev/null && [[ $(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) != Z ]]
}

# read_pid PIDFILE: the PID in PIDFILE (digits only: pid files may end in a newline).
read_pid() { tr -dc '0-9' <"$1"; }

# pid_alive PIDFILE: the PID in PIDFILE names a running process.
pid_alive() {
    [[ -s $1 ]] && alive "$(read_pid "$1")"
}

# stop_pidfile NAME PIDFILE: TERM the PID in PIDFILE, wait for it to go (KILL after the bound), then
# remove PIDFILE. slurmctld and slurmdbd leave stale pid files that break a later start.
stop_pidfile() {
    local name=$1 file=$2 pid deadline
    if [[ ! -e $file ]]; then
        return 0
    fi
    pid=$(read_pid "$file")
    if alive "$pid"; then
        log "stopping $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        deadline=$((SECONDS + READY_TIMEOUT_S))
        while alive "$pid"; do
            if ((SECONDS >= deadline)); then
                log "$name (pid $pid) ignored SIGTERM for ${READY_TIMEOUT_S}s: SIGKILL"
                kill -KILL "$pid" 2>/dev/null || true
                break
            fi
            sleep 0.1
        done
    fi
    rm -f "$file"
}

cmd_install() {
    need_root
    local installed
    installed=$(dpkg-query -W -f='${db:Status-Abbrev}\n' "${PACKAGES[@]}" 2>/dev/null | grep -c '^ii' || true)
    if ((installed != ${#PACKAGES[@]})); then
        log "installing ${PACKAGES[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}"
    else
        log "already installed: ${PACKAGES[*]}"
    fi
}

# The database password is made once and kept (mode 600) so that a restart matches MariaDB's user.
db_password() {
    local file=$ETC/db_password
    if [[ ! -s $file ]]; then
        (umask 077 && head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' >"$file")
    fi
    cat "$file"
}

write_configs() {
    local host cpus mem_mb
    host=$(hostname -s)
    cpus=$(nproc)
    mem_mb=$(awk '/^MemTotal:/ {printf "%d", $2 / 1024 * 0.8}' /proc/meminfo)  # leave 20% to the OS

    install -d -m 0755 "$ETC" "$RUN"
    install -d -o slurm -g slurm -m 0755 "$LOG" "$STATE_DIR/spool/slurmctld"
    install -d -m 0755 "$STATE_DIR/spool/slurmd"

    cat >"$ETC/slurm.conf" <<EOF
# Written by scripts/local_slurm.sh: a one-node cluster on $host (rewritten at every start).
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
# Batch jobs may be requeued (scontrol requeue, preemption, node failure): ndt resumes them.
JobRequeue=1
# Seconds between SIGTERM and SIGKILL when a job is cancelled or requeued (default 30): short, so
# that tests of requeue and hard kills are quick.
KillWait=5
StateSaveLocation=$STATE_DIR/spool/slurmctld
SlurmdSpoolDir=$STATE_DIR/spool/slurmd
SlurmctldPidFile=$SLURMCTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# Accounting through slurmdbd: without it sacct fails and submitit never sees a job that died hard.
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF

    (
        umask 077
        cat >"$ETC/slurmdbd.conf" <<EOF
# Written by scripts/local_slurm.sh (rewritten at every start).
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=slurm
LogFile=$LOG/slurmdbd.log
PidFile=$SLURMDBD_PID
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=$DB_NAME
StorageUser=$DB_USER
StoragePass=$(db_password)
EOF
    )
    chown slurm:slurm "$ETC/slurmdbd.conf"  # slurmdbd refuses a config others can read
    chmod 600 "$ETC/slurmdbd.conf"

    # Let clients find the cluster without SLURM_CONF, unless /etc/slurm holds someone else's config.
    local name
    for name in slurm.conf slurmdbd.conf; do
        if [[ -L /etc/slurm/$name && $(readlink "/etc/slurm/$name") == "$ETC/$name" ]]; then
            continue
        elif [[ -e /etc/slurm/$name || -L /etc/slurm/$name ]]; then
            log "/etc/slurm/$name is not ours: left alone; use: export SLURM_CONF=$ETC/slurm.conf"
        else
            install -d -m 0755 /etc/slurm
            ln -s "$ETC/$name" "/etc/slurm/$name"
        fi
    done
}

start_munged() {
    if pid_alive "$MUNGED_PID"; then
        log "munged already running"
        return
    fi
    rm -f "$MUNGED_PID"
    install -d -o munge -g munge -m 0755 /run/munge
    log "starting munged"
    runuser -u munge -- /usr/sbin/munged
    wait_until munged bash -c 'munge -n | unmunge'
}

# start_mariadbd FRESH: FRESH=1 when the controller's state is new (job ids restart at 1): the old
# accounting records are dropped, as sacct would mix them up with new jobs of the same ids.
start_mariadbd() {
    local fresh=$1
    if ! pid_alive "$MARIADBD_PID"; then
        rm -f "$MARIADBD_PID"
        install -d -o mysql -g mysql -m 0755 /run/mysqld
        log "starting mariadbd"
        # mariadbd stays in the foreground: detach it; it writes its own pid file.
        nohup /usr/sbin/mariadbd --user=mysql --bind-address=127.0.0.1 --pid-file="$MARIADBD_PID" \
            >>"$LOG/mariadbd.log" 2>&1 </dev/null &
        wait_until mariadbd mariadb-admin --silent ping
        wait_until "mariadbd pid file" test -s "$MARIADBD_PID"
    else
        log "mariadbd already running"
    fi
    if ((fresh)) && ! pid_alive "$SLURMDBD_PID"; then
        log "new controller state: emptying the accounting database"
        mariadb --protocol=socket -e "DROP DATABASE IF EXISTS $DB_NAME"
    fi
    # As root over the socket (unix_socket authentication): the accounting database and its user.
    mariadb --protocol=socket <<EOF
CREATE DATABASE IF NOT EXISTS $DB_NAME;
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$(db_password)';
ALTER USER '$DB_USER'@'localhost' IDENTIFIED BY '$(db_password)';
GRANT ALL ON $DB_NAME.* TO '$DB_USER'@'localhost';
EOF
}

# start_slurm_daemon NAME PIDFILE READY_COMMAND...: start /usr/sbin/NAME unless its pid file names a
# live process, then poll READY_COMMAND.
start_slurm_daemon() {
    local name=$1 file=$2
    shift 2
    if pid_alive "$file"; then
        log "$name already running"
    else
        rm -f "$file"
        log "starting $name"
        "/usr/sbin/$name"
    fi
    wait_until "$name" "$@"
}

ctld_up() { scontrol ping | grep -q 'is UP'; }
node_ready() { sinfo -h -o %T | grep -Eq '^(idle|mixed|allocated)'; }

cmd_start() {
    need_root
    command -v slurmctld >/dev/null || die "SLURM is not installed: run $0 install first"
    local fresh=0
    [[ -d $STATE_DIR/spool/slurmctld ]] || fresh=1
    write_configs
    start_munged
    start_mariadbd "$fresh"
    start_slurm_daemon slurmdbd "$SLURMDBD_PID" sacctmgr -n list cluster
    start_slurm_daemon slurmctld "$SLURMCTLD_PID" ctld_up
    start_slurm_daemon slurmd "$SLURMD_PID" node_ready
    log "cluster '$CLUSTER' is up: partition debug, $(nproc) CPUs, no GPU (config: $SLURM_CONF)"
    sinfo >&2
}

cmd_stop() {
    need_root
    # Reverse start order: slurmd and slurmctld still talk to slurmdbd, which still needs the database.
    local i name
    for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do
        name=${DAEMONS[i]}
        stop_pidfile "$name" "${PIDFILE[$name]}"
    done
    log "stopped"
}

cmd_status() {
    local name file all_up=0
    for name in "${DAEMONS[@]}"; do
        file=${PIDFILE[$name]}
        if pid_alive "$file"; then
            printf '%-10s running (pid %s)\n' "$name" "$(read_pid "$file")"
        else
            printf '%-10s stopped\n' "$name"
            all_up=1
        fi
    done
    if ((all_up == 0)); then
        sinfo
    fi
    return "$all_up"
}

case ${1:-} in
install) cmd_install ;;
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
*)
    echo "usage: $0 install|start|stop|status   (state in \$NDT_SLURM_DIR, default /var/lib/ndt-slurm)" >&2
    exit 2
    ;;
esac
