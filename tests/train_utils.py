"""Helpers for tests that run `main.py --mode train` as a separate process on a tiny digits model."""
import glob
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A 48k-parameter DDPM++ at 8x8: compiles in seconds, trains a step in milliseconds.
TINY = [
    "--config.data.image_size=8", "--config.model.nf=8", "--config.model.ch_mult=(1,2)",
    "--config.model.attn_resolutions=(4,)", "--config.training.batch_size=8", "--config.eval.batch_size=8",
    "--config.training.snapshot_sampling=False", "--config.training.log_freq=2", "--config.training.eval_freq=10",
    "--config.training.snapshot_freq=20", "--config.training.snapshot_freq_for_preemption=4",
    "--config.optim.warmup=5",
]


def train_command(workdir, *overrides, config="configs/vp/digits.py"):
  return [sys.executable, os.path.join(ROOT, "main.py"), f"--config={os.path.join(ROOT, config)}", "--mode=train",
          f"--workdir={workdir}", *TINY, *overrides]


def env_with(devices=1):
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["PYTHONUNBUFFERED"] = "1"
  env["TF_CPP_MIN_LOG_LEVEL"] = "3"
  return env


def run_train(workdir, *overrides, devices=1, timeout=600, check=True):
  proc = subprocess.run(train_command(workdir, *overrides), env=env_with(devices), cwd=ROOT, capture_output=True,
                        text=True, timeout=timeout)
  if check and proc.returncode != 0:
    raise AssertionError(f"training failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
  return proc


def checkpoint_steps(workdir):
  steps = {}
  for kind in ("checkpoints", "checkpoints-meta"):
    steps[kind] = sorted(int(os.path.basename(p)) for p in glob.glob(os.path.join(workdir, kind, "*"))
                         if os.path.basename(p).isdigit())
  return steps


def checkpoint_data_files(step_dir):
  """The array data files of a written checkpoint folder `<workdir>/checkpoints/<step>` (not its metadata),
  largest first: where tests flip bits to damage a checkpoint."""
  out = []
  for root, _, names in os.walk(os.path.join(step_dir, "default")):
    for name in names:
      if "METADATA" not in name and "manifest" not in name:
        path = os.path.join(root, name)
        out.append((os.path.getsize(path), path))
  return [p for _, p in sorted(out, reverse=True)]


def flip_a_bit_in_each_data_file(step_dir, mask):
  """XORs the middle byte of every array data file over 64 bytes of a written checkpoint with `mask`."""
  for path in checkpoint_data_files(step_dir):
    data = bytearray(open(path, "rb").read())
    if len(data) > 64:
      data[len(data) // 2] ^= mask
      with open(path, "wb") as f:
        f.write(bytes(data))


def latest_state(workdir):
  """The newest checkpoint as a flat {path: numpy array} dict (no model needed)."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from score_sde import checkpointing  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  ckpts = checkpointing.Checkpoints(workdir, async_save=False)
  manager, step = ckpts.latest()
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])  # whatever device count saved it
  metadata = manager.item_metadata(step)["default"]
  target = jax.tree_util.tree_map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), metadata.tree)
  tree = manager.restore(step, args=ocp.args.Composite(default=ocp.args.StandardRestore(target)))["default"]
  ckpts.close()
  flat = {}

  def visit(prefix, node):
    if isinstance(node, dict):
      for k, v in node.items():
        visit(f"{prefix}/{k}" if prefix else str(k), v)
    elif isinstance(node, (list, tuple)):
      for i, v in enumerate(node):
        visit(f"{prefix}/{i}", v)
    elif node is not None:  # empty optimizer states restore as None
      flat[prefix] = np.asarray(node)

  visit("", tree)
  return step, flat
