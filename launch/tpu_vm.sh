#!/usr/bin/env bash
# Train on a Cloud TPU VM: a single host (v3-8, v4-8) or a pod slice (every worker runs the same command;
# jax.distributed finds its peers, each process feeds its share of the global batch, process 0 logs).
#
#   launch/tpu_vm.sh TPU_NAME ZONE configs/vp/cifar10.py gs://BUCKET/runs/cifar10_vp [--config.X=Y ...]
#
# Data: TFDS datasets must already be prepared in a bucket (--config.data.data_dir=gs://BUCKET/tfds); the
# workdir should be a bucket too, so every worker sees the same checkpoints.
set -euo pipefail
if [ $# -lt 4 ]; then
  echo "usage: $0 TPU_NAME ZONE CONFIG WORKDIR [main.py flags...]" >&2
  exit 2
fi
tpu=$1 zone=$2 config=$3 workdir=$4
shift 4
repo=$(cd "$(dirname "$0")/.." && pwd)
gcloud compute tpus tpu-vm scp --recurse "$repo" "$tpu:~/score_sde" --zone "$zone" --worker=all
gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command "
  set -e; cd ~/score_sde
  pip install -q -e . 'jax[tpu]'
  python main.py --config $config --mode train --workdir $workdir --distributed $*"
