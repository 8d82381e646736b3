#!/usr/bin/env bash
# Train on the GPUs of one machine (all visible GPUs, data parallel), or on several machines under SLURM
# (`srun launch/gpu.sh ...` with one task per node: jax.distributed reads the cluster from SLURM).
#
#   launch/gpu.sh configs/vp/cifar10.py runs/cifar10_vp [--config.X=Y ...]
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 CONFIG WORKDIR [main.py flags...]" >&2
  exit 2
fi
config=$1 workdir=$2
shift 2
cd "$(dirname "$0")/.."
pip install -q -e . 'jax[cuda12]'
distributed=()
if [ -n "${SLURM_NTASKS:-}" ] && [ "${SLURM_NTASKS}" -gt 1 ]; then
  distributed=(--distributed)
fi
# Let XLA take most of the GPU memory up front, as training wants it.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
python main.py --config "$config" --mode train --workdir "$workdir" "${distributed[@]}" "$@"
