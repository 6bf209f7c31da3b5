#!/usr/bin/env bash
# Submit a sweep to SLURM and return: the Hydra launcher (which submits one job array, then waits
# for every job) runs detached, so you can log out.
#
#   scripts/submit_sweep.sh [+sweep=NAME] [hydra overrides...]
#
#   scripts/submit_sweep.sh                                         # the paper sweep (+sweep=paper)
#   scripts/submit_sweep.sh hydra.launcher.partition=gpu seed=0,1,2
#   scripts/submit_sweep.sh +sweep=smoke hydra.launcher.gpus_per_node=0
#
# Runs from the repository root (relative paths such as results/ are read from there). The
# launcher's log goes to <sweep dir>/launcher.log, its pid to <sweep dir>/launcher.pid. Python:
# $PYTHON, else the active virtual environment's, else .venv/bin/python, else python3.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -n ${PYTHON:-} ]]; then
    :
elif [[ -n ${VIRTUAL_ENV:-} ]]; then
    PYTHON=python
elif [[ -x .venv/bin/python ]]; then
    PYTHON=.venv/bin/python
else
    PYTHON=python3
fi

args=("$@")
has_sweep=0
for a in "${args[@]}"; do
    [[ $a =~ ^\+{0,2}sweep= ]] && has_sweep=1
done
((has_sweep)) || args=(+sweep=paper "${args[@]}")
args=(hydra/launcher=slurm "${args[@]}")

# Where Hydra will put the sweep: compose the config with the overrides that are not sweeps
# (a sweep such as seed=0,1,2 cannot change the sweep directory).
sweep_dir=$(
    "$PYTHON" - "${args[@]}" <<'EOF'
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser

from ndt.running.config import register_configs

register_configs()
parser = OverridesParser.create()
fixed = [a for a in sys.argv[1:] if not a.startswith("-") and not parser.parse_override(a).is_sweep_override()]
try:
    with initialize_config_dir(config_dir=str(Path("conf").resolve()), version_base="1.3"):
        cfg = compose("config", overrides=fixed, return_hydra_config=True)
except Exception as e:  # a bad override: Hydra's message, not its traceback
    sys.exit(f"error: {e}")
# Refused here, in the foreground, rather than in the detached launcher's log (it checks again, per job).
from omegaconf import OmegaConf

from ndt.running.slurm_check import SlurmRequestError, check_request
from ndt.running.validation import check_config

problems = check_config(cfg)
if problems:
    sys.exit("error: invalid config value(s):\n  " + "\n  ".join(problems))
keys = ("partition", "cpus_per_task", "tasks_per_node", "mem_gb", "gpus_per_node")
try:
    check_request({k: OmegaConf.select(cfg, f"hydra.launcher.{k}") for k in keys})
except SlurmRequestError as e:
    sys.exit(f"error: {e}")
print(cfg.hydra.sweep.dir)
EOF
)
mkdir -p "$sweep_dir"
log=$sweep_dir/launcher.log
pidfile=$sweep_dir/launcher.pid

if [[ -s $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    echo "a launcher for $sweep_dir is already running (pid $(cat "$pidfile"); log: $log)" >&2
    exit 1
fi

stamp=$(mktemp)
trap 'rm -f "$stamp"' EXIT
echo "submitting: $PYTHON -m ndt.run ${args[*]}"
# setsid + nohup: the launcher survives the end of this shell and of the login session.
setsid nohup "$PYTHON" -m ndt.run "${args[@]}" >"$log" 2>&1 </dev/null &
launcher=$!
echo "$launcher" >"$pidfile"

# Wait (bounded) until sbatch has accepted the array (submitit then writes <job id>_submission.sh),
# so that a bad override or an unreachable cluster is reported here and not only in the log.
deadline=$((SECONDS + 180))
until [[ -n $(find "$sweep_dir/.submitit" -name '*_submission.sh' -newer "$stamp" 2>/dev/null | head -1) ]]; do
    if ! kill -0 "$launcher" 2>/dev/null; then
        echo "the launcher stopped before submitting; the end of $log:" >&2
        tail -n 20 "$log" >&2
        exit 1
    fi
    if ((SECONDS >= deadline)); then
        echo "no submission after 180 s; the launcher (pid $launcher) goes on: see $log" >&2
        break
    fi
    sleep 1
done

cat <<EOF
launcher: pid $launcher, detached; it waits for every job, then exits
log:      $log
results:  $sweep_dir/<arch>__<dataset>__s<seed>/   (job logs: $sweep_dir/.submitit/)
check:    $PYTHON -m ndt.status $sweep_dir     (or: make status SWEEP=$sweep_dir; squeue --me)
resume:   run the same command again: complete runs are skipped, the others resume from their last checkpoint
EOF
