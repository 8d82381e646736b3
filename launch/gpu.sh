#!/usr/bin/env bash
# Run main.py on the GPUs of one machine: one process sees all visible GPUs (CUDA_VISIBLE_DEVICES picks a
# subset) and main.py splits every batch over them (data parallel). Exits with main.py's status: 143 means
# "preempted, checkpoint saved": run the same command again to resume (launch/README.md). For several machines
# use launch/slurm.sh.
#
#   launch/gpu.sh [--dry-run] CONFIG WORKDIR [main.py flags...]
#   CUDA_VISIBLE_DEVICES=0,1 launch/gpu.sh configs/vp/cifar10.py runs/cifar10_vp --config.training.batch_size=256
#
# --dry-run  print every command (one per line, `+ ` first) and run none
#
# Variables (environment), default in brackets:
#   MODE                            main.py --mode: train, eval, sample, stats, train_classifier, edit [train]
#   CUDA_VISIBLE_DEVICES            the GPUs to use; unset: all of them [unset]
#   XLA_PYTHON_CLIENT_MEM_FRACTION  share of each GPU's memory JAX takes up front [0.9]
#   PYTHON                          the Python that runs main.py [python]
#   PIP_INSTALL                     1: first pip install this repository and JAX_PIP into PYTHON [0]
#   JAX_PIP                         the JAX package to install with it [jax[cuda12]]
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

MODE=${MODE:-train}
XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
PYTHON=${PYTHON:-python}
PIP_INSTALL=${PIP_INSTALL:-0}
JAX_PIP=${JAX_PIP:-jax[cuda12]}
LAUNCH_USAGE="$0 [--dry-run] CONFIG WORKDIR [main.py flags...]"

main() {
  parse_args "$@"
  require_bool PIP_INSTALL "$PIP_INSTALL"
  require_config_file "$PWD"
  if [ "$PIP_INSTALL" = 1 ]; then
    run_cmd "$PYTHON" -m pip install -q -e "$LAUNCH_REPO" "$JAX_PIP"
  fi
  # The environment goes on the command line (env VAR=...), so the printed line is all that matters.
  local environment=(XLA_PYTHON_CLIENT_MEM_FRACTION="$XLA_PYTHON_CLIENT_MEM_FRACTION")
  if [ -n "${CUDA_VISIBLE_DEVICES+set}" ]; then
    environment+=(CUDA_VISIBLE_DEVICES="$CUDA_VISIBLE_DEVICES")
  fi
  # shellcheck disable=SC2119  # one process: no --distributed
  build_main_args
  run_cmd env "${environment[@]}" "$PYTHON" "$LAUNCH_REPO/main.py" "${MAIN_ARGS[@]}"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  main "$@"
fi
