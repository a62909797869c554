#!/usr/bin/env bash
# A real one-node Slurm cluster on this (Debian, root) host, from nothing: installs what is
# missing with apt, writes the configs, starts munged, mariadbd, slurmdbd, slurmctld and slurmd
# as plain daemons (no systemd), adds the cluster/account/user to the accounting database, and
# waits until a test job runs. Idempotent: a second call on a running cluster checks it and
# returns in seconds; a changed config restarts the daemons that read it.
#
#   scripts/slurm_up.sh                 # partition "debug", account "sedsft"
#   SLURM_PARTITION=p SLURM_ACCOUNT=a SLURM_FAKE_GPUS=2 scripts/slurm_up.sh
#   snakemake results/tiny/rl_eval.json --profile profiles/slurm \
#       --default-resources slurm_partition=debug slurm_account=sedsft
#   scripts/slurm_down.sh               # stops the daemons (--purge: also state and database)
#
# What mattered on a sandbox without cgroups or systemd (Debian 12, slurm-wlm 22.05):
# proctrack/linuxproc and task/affinity (the cgroup plugins need a cgroup hierarchy);
# EnforcePartLimits=ALL (a job larger than the node is refused at sbatch, not left pending);
# MinJobAge=300 (snakemake-executor-plugin-slurm's squeue status mode wants ended jobs kept
# >= 120 s); AccountingStorageEnforce=associations (an unknown -A fails, as on a real cluster);
# a fake GPU gres backed by a device file (22.05 drops a file-less GPU), so --gpus=N is accepted.
# Memory is not enforced without cgroups.
set -euo pipefail

CLUSTER=${SLURM_CLUSTER:-sedsft}
PARTITION=${SLURM_PARTITION:-debug}
ACCOUNT=${SLURM_ACCOUNT:-sedsft}
FAKE_GPUS=${SLURM_FAKE_GPUS:-1}
DB_PASSWORD=${SLURM_DB_PASSWORD:-sedsft-slurmdbd}
ETC=/etc/slurm
LOGS=/var/log/slurm
STATE=/var/lib/slurm

say() { echo "slurm_up: $*"; }
die() { echo "slurm_up: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root (it installs packages and starts daemons)"
command -v apt-get > /dev/null || die "needs apt-get (a Debian/Ubuntu host)"
(( FAKE_GPUS >= 0 && FAKE_GPUS <= 4 )) || die "SLURM_FAKE_GPUS=$FAKE_GPUS: 0 to 4 (one device file each)"

# ---------------------------------------------------------------- packages
missing=()
for pair in slurmctld:slurm-wlm slurmd:slurm-wlm sbatch:slurm-client munged:munge mariadbd:mariadb-server \
            slurmdbd:slurmdbd; do
    command -v "${pair%%:*}" > /dev/null || missing+=("${pair##*:}")
done
if ((${#missing[@]})); then
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q "${missing[@]}" > /tmp/slurm_up_apt.log 2>&1 \
        || { apt-get update -q > /dev/null 2>&1 && apt-get install -y -q "${missing[@]}" > /tmp/slurm_up_apt.log 2>&1; } \
        || die "apt-get install ${missing[*]} failed: /tmp/slurm_up_apt.log"
fi

# ---------------------------------------------------------------- helpers
running() { pgrep -x "$1" > /dev/null; }

wait_for() {  # wait_for SECONDS WHAT COMMAND...
    local seconds=$1 what=$2; shift 2
    for _ in $(seq "$((seconds * 2))"); do "$@" > /dev/null 2>&1 && return 0; sleep 0.5; done
    die "$what did not come up in ${seconds} s (logs: $LOGS)"
}

stop() {  # stop DAEMON: SIGTERM, then wait for it to exit
    running "$1" || return 0
    pkill -x "$1" || true
    for _ in $(seq 40); do running "$1" || return 0; sleep 0.25; done
    pkill -9 -x "$1" || true
}

changed=()
install_file() {  # install_file PATH MODE OWNER < content; records PATH in $changed when it differs
    local path=$1 mode=$2 owner=$3 tmp
    tmp=$(mktemp)
    cat > "$tmp"
    if [ -f "$path" ] && cmp -s "$tmp" "$path"; then rm -f "$tmp"; return; fi
    install -m "$mode" -o "${owner%%:*}" -g "${owner##*:}" "$tmp" "$path"
    rm -f "$tmp"
    changed+=("$path")
}
changed_any() { local p; for p in "$@"; do [[ " ${changed[*]} " == *" $p "* ]] && return 0; done; return 1; }

mkdir -p "$ETC" "$LOGS" "$STATE/slurmctld" "$STATE/slurmd" /run/munge /run/mysqld
chown slurm:slurm "$LOGS" "$STATE/slurmctld"
chown munge:munge /run/munge
chown mysql:mysql /run/mysqld

# ---------------------------------------------------------------- munge (authentication)
if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
fi
running munged || runuser -u munge -- /usr/sbin/munged
wait_for 10 munged sh -c 'munge -n | unmunge'

# ---------------------------------------------------------------- mariadb + slurmdbd (accounting: sacct)
if ! running mariadbd; then
    runuser -u mysql -- /usr/sbin/mariadbd --skip-networking=0 --bind-address=127.0.0.1 \
        >> "$LOGS/mariadb.log" 2>&1 &
fi
wait_for 60 mariadbd mariadb-admin ping
mariadb <<SQL
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASSWORD';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
SQL

install_file "$ETC/slurmdbd.conf" 600 slurm:slurm <<EOF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=slurm
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DB_PASSWORD
StorageLoc=slurm_acct_db
LogFile=$LOGS/slurmdbd.log
PidFile=/run/slurmdbd.pid
EOF

# ---------------------------------------------------------------- slurm.conf
host=$(hostname -s)
# this host's sockets/cores/threads as slurmd detects them, and 90 % of its memory for jobs
node=$(slurmd -C | head -1 | sed -E 's/ RealMemory=[0-9]+//')
memory=$(slurmd -C | sed -nE 's/.*RealMemory=([0-9]+).*/\1/p' | head -1)
gres_line=""
gres_conf=""
if ((FAKE_GPUS > 0)); then
    gres_line=" Gres=gpu:$FAKE_GPUS"
    # 22.05 drops a GPU without a File=; each fake GPU needs its own device file
    devices=(/dev/null /dev/zero /dev/full /dev/random)
    for i in $(seq 0 $((FAKE_GPUS - 1))); do gres_conf+="Name=gpu File=${devices[$i]}"$'\n'; done
fi
install_file "$ETC/gres.conf" 644 root:root <<< "${gres_conf:-# no fake GPUs}"
install_file "$ETC/slurm.conf" 644 root:root <<EOF
ClusterName=$CLUSTER
SlurmctldHost=$host
SlurmUser=slurm
AuthType=auth/munge
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
ReturnToService=2
EnforcePartLimits=ALL
MinJobAge=300
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageEnforce=associations
AccountingStorageTRES=gres/gpu
# the plugin's --comment (rule name and wildcards) kept in sacct
AccountingStoreFlags=job_comment
JobAcctGatherType=jobacct_gather/linux
JobCompType=jobcomp/none
GresTypes=gpu
$node RealMemory=$((memory * 9 / 10))$gres_line State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF

if changed_any "$ETC/slurmdbd.conf"; then stop slurmdbd; fi
running slurmdbd || slurmdbd
wait_for 30 slurmdbd sacctmgr -n list cluster

# the cluster, account and user before any job: associations are enforced
sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER" || sacctmgr -i add cluster "$CLUSTER" > /dev/null
sacctmgr -n -P list account format=account | grep -qx "$ACCOUNT" \
    || sacctmgr -i add account "$ACCOUNT" Cluster="$CLUSTER" Description="sedsft" > /dev/null
for user in root ${SUDO_USER:-}; do
    sacctmgr -n -P list association user="$user" account="$ACCOUNT" format=user | grep -qx "$user" \
        || sacctmgr -i add user "$user" Account="$ACCOUNT" Cluster="$CLUSTER" > /dev/null
done

if changed_any "$ETC/slurm.conf" "$ETC/gres.conf"; then stop slurmd; stop slurmctld; fi
running slurmctld || slurmctld
wait_for 30 slurmctld scontrol ping
running slurmd || slurmd
wait_for 30 "node $host" sh -c "sinfo -h -n '$host' -o %T | grep -Eq '^(idle|mixed|allocated|completing)'"

# a test job through the scheduler and the accounting
out=$(timeout 120 srun -A "$ACCOUNT" -p "$PARTITION" -N 1 -n 1 -t 1 --job-name=slurm_up_check hostname) \
    || die "the test job did not run (logs: $LOGS)"
say "cluster $CLUSTER up: partition $PARTITION, account $ACCOUNT, node $out ($(sinfo -h -o '%c CPUs, %m MB'))," \
    "$FAKE_GPUS fake GPU(s); $(sinfo --version)"
