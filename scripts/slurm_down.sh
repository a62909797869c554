#!/usr/bin/env bash
# Stops the one-node cluster scripts/slurm_up.sh started (slurmd, slurmctld, slurmdbd, mariadbd,
# munged). The packages and configs stay, so the next slurm_up.sh takes seconds.
#   scripts/slurm_down.sh           # jobs' history stays in the accounting database
#   scripts/slurm_down.sh --purge   # also the controller's state and the accounting database
set -euo pipefail

[ "$(id -u)" = 0 ] || { echo "slurm_down: needs root" >&2; exit 1; }
purge=false
case "${1:-}" in
    "") ;;
    --purge) purge=true ;;
    *) echo "slurm_down: unknown argument ${1} (only --purge)" >&2; exit 2 ;;
esac

stop() {
    pgrep -x "$1" > /dev/null || return 0
    pkill -x "$1" || true
    for _ in $(seq 40); do pgrep -x "$1" > /dev/null || return 0; sleep 0.25; done
    pkill -9 -x "$1" || true
}

stop slurmd
stop slurmctld
if $purge && pgrep -x mariadbd > /dev/null; then
    stop slurmdbd
    mariadb -e "DROP DATABASE IF EXISTS slurm_acct_db"
fi
stop slurmdbd
stop mariadbd
stop munged
if $purge; then
    rm -rf /var/lib/slurm/slurmctld/* /var/lib/slurm/slurmd/*
fi
echo "slurm_down: stopped$($purge && echo ', state and accounting database removed' || true)"
