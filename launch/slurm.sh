#!/usr/bin/env bash
# Run main.py on several GPU machines under SLURM: writes a batch job (its #SBATCH lines from the variables
# below) and submits it with sbatch. The job runs `srun` with one task per node; each task is one main.py
# process with --distributed that uses all GPUs of its node (jax.distributed.initialize() reads the job's
# SLURM environment; JAX_LOCAL_DEVICE_IDS keeps it from narrowing a process to one GPU, its default under SLURM).
#
# Preemption: the job is --requeue (SLURM requeues it when it preempts it or a node fails), and SIGTERM reaches
# main.py SIGNAL_SECONDS before the time limit (--signal), so it saves a checkpoint and exits 143; the job then
# requeues itself (scontrol requeue) and its next run resumes from the workdir (launch/README.md).
#
#   launch/slurm.sh [--dry-run] CONFIG WORKDIR [main.py flags...]
#   NODES=4 GPUS_PER_NODE=8 PARTITION=gpu launch/slurm.sh configs/vp/cifar10.py /shared/runs/cifar10_vp
#
# --dry-run  print the sbatch command with the job script it would submit (as a here-document) and submit nothing
#
# CONFIG, WORKDIR and this repository must be on a file system every node sees; the job runs in the directory
# slurm.sh was started from.
#
# Variables (environment), default in brackets:
#   NODES           machines (one main.py process each) [2]
#   GPUS_PER_NODE   GPUs per machine [8]
#   CPUS_PER_TASK   CPU cores per process (its input pipeline); empty: the cluster's default []
#   TIME_LIMIT      wall time of one run of the job, as sbatch --time [24:00:00]
#   PARTITION       partition; empty: the cluster's default []
#   JOB_NAME        job name [score_sde]
#   OUTPUT          log file, as sbatch --output (requeued runs append to it) [slurm-%x-%j.out]
#   EXTRA_SBATCH    more sbatch options, split on spaces, one #SBATCH line each, e.g. "--account=a --qos=q" []
#   SIGNAL_SECONDS  seconds before the time limit at which SIGTERM reaches main.py [300]
#   MAX_REQUEUES    runs of the job after the first, at most (SLURM_RESTART_COUNT) [20]
#   JOB_SETUP       one shell line the job runs first, e.g. "source ~/venv/bin/activate" []
#   MODE            main.py --mode: train, eval, sample, stats, train_classifier, edit [train]
#   PYTHON          the Python that runs main.py on the nodes [python]
#   XLA_PYTHON_CLIENT_MEM_FRACTION  share of each GPU's memory JAX takes up front [0.9]
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

NODES=${NODES:-2}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
CPUS_PER_TASK=${CPUS_PER_TASK:-}
TIME_LIMIT=${TIME_LIMIT:-24:00:00}
PARTITION=${PARTITION:-}
JOB_NAME=${JOB_NAME:-score_sde}
OUTPUT=${OUTPUT:-slurm-%x-%j.out}
EXTRA_SBATCH=${EXTRA_SBATCH:-}
SIGNAL_SECONDS=${SIGNAL_SECONDS:-300}
MAX_REQUEUES=${MAX_REQUEUES:-20}
JOB_SETUP=${JOB_SETUP:-}
MODE=${MODE:-train}
PYTHON=${PYTHON:-python}
XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
LAUNCH_USAGE="$0 [--dry-run] CONFIG WORKDIR [main.py flags...]"

check_variables() {
  local name
  for name in NODES GPUS_PER_NODE SIGNAL_SECONDS MAX_REQUEUES; do
    require_count "$name" "${!name}"
  done
  if [ "$NODES" -lt 1 ] || [ "$GPUS_PER_NODE" -lt 1 ]; then
    usage_error "NODES and GPUS_PER_NODE must be at least 1"
  fi
  if [ -n "$CPUS_PER_TASK" ]; then
    require_count CPUS_PER_TASK "$CPUS_PER_TASK"
  fi
  # sbatch reads #SBATCH lines word by word: a value with a space would be cut there.
  for name in TIME_LIMIT PARTITION JOB_NAME OUTPUT; do
    if [[ ${!name} =~ [[:space:]] ]]; then
      usage_error "$name='${!name}' must not contain spaces"
    fi
  done
}

# shellcheck disable=SC2016  # single quotes keep $status and $SLURM_* for the job to expand
# The batch script, fully expanded: only $status and SLURM's own variables are left for the job to read.
job_script() {
  local extra option srun_words devices
  split_words extra "$EXTRA_SBATCH"
  devices=$(seq -s, 0 $((GPUS_PER_NODE - 1)))
  srun_words=(srun --ntasks-per-node=1 --kill-on-bad-exit=1)
  # srun does not inherit sbatch's --cpus-per-task (SLURM >= 22.05), so it is given to both.
  if [ -n "$CPUS_PER_TASK" ]; then
    srun_words+=(--cpus-per-task="$CPUS_PER_TASK")
  fi
  build_main_args --distributed
  echo '#!/usr/bin/env bash'
  echo "#SBATCH --job-name=$JOB_NAME"
  echo "#SBATCH --nodes=$NODES"
  echo '#SBATCH --ntasks-per-node=1'
  echo "#SBATCH --gpus-per-node=$GPUS_PER_NODE"
  if [ -n "$CPUS_PER_TASK" ]; then
    echo "#SBATCH --cpus-per-task=$CPUS_PER_TASK"
  fi
  echo "#SBATCH --time=$TIME_LIMIT"
  if [ -n "$PARTITION" ]; then
    echo "#SBATCH --partition=$PARTITION"
  fi
  echo "#SBATCH --output=$OUTPUT"
  echo '#SBATCH --open-mode=append'
  echo '#SBATCH --requeue'
  echo "#SBATCH --signal=TERM@$SIGNAL_SECONDS"
  for option in "${extra[@]}"; do
    echo "#SBATCH $option"
  done
  echo '# Written by launch/slurm.sh. main.py exits 143 after SIGTERM saved a checkpoint: requeue to resume.'
  echo 'set -euo pipefail'
  echo "cd $(quote_word "$PWD")"
  if [ -n "$JOB_SETUP" ]; then
    echo "$JOB_SETUP"
  fi
  echo "export XLA_PYTHON_CLIENT_MEM_FRACTION=$(quote_word "$XLA_PYTHON_CLIENT_MEM_FRACTION")"
  echo "export JAX_LOCAL_DEVICE_IDS=$devices"
  echo 'status=0'
  echo "$(quote_words "${srun_words[@]}" "$PYTHON" "$LAUNCH_REPO/main.py" "${MAIN_ARGS[@]}") || status=\$?"
  echo "if [ \"\$status\" -eq 143 ] && [ \"\${SLURM_RESTART_COUNT:-0}\" -lt $MAX_REQUEUES ]; then"
  echo '  echo "main.py was stopped by SIGTERM after saving a checkpoint: requeueing job $SLURM_JOB_ID" >&2'
  echo '  scontrol requeue "$SLURM_JOB_ID" || echo "scontrol requeue failed: resubmit to resume" >&2'
  echo 'fi'
  echo 'exit "$status"'
}

main() {
  parse_args "$@"
  check_variables
  require_config_file "$PWD"
  local script
  script=$(job_script)
  # Printed as a here-document, which pastes back into a shell as the same submission.
  if [ "$DRY_RUN" = 1 ]; then
    printf "+ sbatch <<'EOF'\n%s\nEOF\n" "$script"
    return 0
  fi
  printf "+ sbatch <<'EOF'\n%s\nEOF\n" "$script" >&2
  printf '%s\n' "$script" | sbatch
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  main "$@"
fi
