#!/usr/bin/env bash
# Run main.py on a Cloud TPU VM: one host (v4-8) or a pod slice (every worker runs the same command with
# --distributed; jax.distributed finds its peers, each process feeds its share of the global batch, process 0
# writes logs and samples). Creates the TPU VM unless it exists, copies this repository to every worker and
# installs it there, then runs main.py on all workers and exits with main.py's status (launch/README.md).
#
#   launch/tpu_vm.sh [--dry-run] [--skip-create] CONFIG WORKDIR [main.py flags...]
#   TPU_NAME=my-v4 ACCELERATOR_TYPE=v4-32 launch/tpu_vm.sh configs/vp/cifar10.py gs://BUCKET/runs/cifar10_vp
#
# --dry-run      print every command (one per line, `+ ` first) and run none
# --skip-create  use an existing TPU VM; do not look for it or create it (same as SKIP_CREATE=1)
#
# CONFIG is a path inside this repository; WORKDIR should be a gs:// bucket, so every worker sees the same
# checkpoints. TFDS data must be prepared in a bucket too (--config.data.data_dir=gs://BUCKET/tfds).
#
# Variables (environment), default in brackets:
#   TPU_NAME          name of the TPU VM [score-sde]
#   ZONE              its zone [us-central2-b]
#   ACCELERATOR_TYPE  TPU type and size, e.g. v4-8, v4-32, v5litepod-16 [v4-8]
#   TPU_VERSION       TPU software version (runtime image) [tpu-ubuntu2204-base]
#   PROJECT           Google Cloud project; empty: gcloud's configured one []
#   CREATE_FLAGS      extra flags for `tpu-vm create`, split on spaces, e.g. "--spot" []
#   SKIP_CREATE       1: use an existing TPU VM, as --skip-create [0]
#   MODE              main.py --mode: train, eval, sample, stats, train_classifier, edit [train]
#   PIP_INSTALL       1: pip install the repository and JAX_PIP on every worker; 0: it is installed [1]
#   JAX_PIP           the JAX package to install with it [jax[tpu]]
#   REMOTE_DIR        where the repository goes on each worker, relative to the home directory [score_sde]
#   REMOTE_PYTHON     the workers' Python [python3]
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
# shellcheck source=launch/tpu_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/tpu_common.sh"

TPU_NAME=${TPU_NAME:-score-sde}
ZONE=${ZONE:-us-central2-b}
ACCELERATOR_TYPE=${ACCELERATOR_TYPE:-v4-8}
TPU_VERSION=${TPU_VERSION:-tpu-ubuntu2204-base}
PROJECT=${PROJECT:-}
CREATE_FLAGS=${CREATE_FLAGS:-}
SKIP_CREATE=${SKIP_CREATE:-0}
MODE=${MODE:-train}
PIP_INSTALL=${PIP_INSTALL:-1}
JAX_PIP=${JAX_PIP:-jax[tpu]}
REMOTE_DIR=${REMOTE_DIR:-score_sde}
REMOTE_PYTHON=${REMOTE_PYTHON:-python3}
LAUNCH_USAGE="$0 [--dry-run] [--skip-create] CONFIG WORKDIR [main.py flags...]"

script_option() {
  case $1 in
    --skip-create) SKIP_CREATE=1 ;;
    *) return 1 ;;
  esac
}

# Creates the TPU VM unless `describe` finds it. Under --dry-run nothing is asked, so the plan shows both.
ensure_tpu() {
  local extra
  split_words extra "$CREATE_FLAGS"
  if [ "$SKIP_CREATE" = 1 ]; then
    note "using the existing TPU VM $TPU_NAME (SKIP_CREATE=1)"
    return 0
  fi
  note "create the TPU VM unless describe finds it"
  if [ "$DRY_RUN" = 0 ]; then
    echo "+ $(quote_words gcloud compute tpus tpu-vm describe "$TPU_NAME" "${LOCATION_FLAGS[@]}")" >&2
    if gcloud compute tpus tpu-vm describe "$TPU_NAME" "${LOCATION_FLAGS[@]}" >/dev/null 2>&1; then
      echo "TPU VM $TPU_NAME exists: not creating it" >&2
      return 0
    fi
  else
    run_cmd gcloud compute tpus tpu-vm describe "$TPU_NAME" "${LOCATION_FLAGS[@]}"
  fi
  run_cmd gcloud compute tpus tpu-vm create "$TPU_NAME" "${LOCATION_FLAGS[@]}" \
    --accelerator-type="$ACCELERATOR_TYPE" --version="$TPU_VERSION" "${extra[@]}"
}

main() {
  parse_args "$@"
  require_bool SKIP_CREATE "$SKIP_CREATE"
  tpu_check_variables
  tpu_location_flags
  ensure_tpu
  tpu_setup_workers
  tpu_run_main
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  main "$@"
fi
