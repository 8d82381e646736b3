"""Trains a tiny digits model, then runs every other mode on a checkpoint, as one process or as one of several.

  python -m tests.multiprocess_modes TRAIN_WORKDIR EVAL_WORKDIR TAG [COORDINATOR NUM_PROCESSES PROCESS_ID]

With the three cluster arguments it joins a `jax.distributed` cluster first. `--mode train` runs in
TRAIN_WORKDIR, then `stats`, `eval` (loss, bits/dim, the VLB, samples with FID/KID), `sample` and `edit`
(inpaint) run on EVAL_WORKDIR's checkpoint through `run_lib.run`, as `main.py` runs them, writing under
`<EVAL_WORKDIR>/eval_<TAG>` and `<EVAL_WORKDIR>/stats_<TAG>` (tests/test_multiprocess_modes.py compares what
one process and two processes write).
"""
import sys

TRAIN_STEPS = 20


def tiny_config(workdir, tag):
  from configs.vp import digits  # pylint: disable=import-outside-toplevel
  config = digits.get_config()
  config.data.image_size = 8
  config.model.update(nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), num_scales=25)
  config.training.update(batch_size=16, n_iters=TRAIN_STEPS, n_jitted_steps=1, log_freq=2, eval_freq=10,
                         snapshot_freq=TRAIN_STEPS, snapshot_freq_for_preemption=10, snapshot_sampling=False)
  config.optim.warmup = 5
  config.eval.update(begin_ckpt=1, end_ckpt=1, batch_size=128, enable_loss=True, enable_bpd=True, enable_vlb=True,
                     enable_sampling=True, num_samples=160, bpd_num_repeats=1, bpd_rtol=1e-3, bpd_atol=1e-3,
                     ckpt_wait_secs=0, stats_dir=f"{workdir}/stats_{tag}",
                     classifier_path=f"{workdir}/digits_classifier.npz")
  config.edit.update(task="inpaint", num_images=12, batch_size=8, mask="random", mask_fraction=0.5)
  return config


def main(train_workdir, eval_workdir, tag, *cluster):
  import jax  # pylint: disable=import-outside-toplevel
  if cluster:
    coordinator, num_processes, process_id = cluster
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=int(num_processes),
                               process_id=int(process_id))
  from score_sde import run_lib  # pylint: disable=import-outside-toplevel
  config = tiny_config(eval_workdir, tag)
  run_lib.run("train", config, train_workdir)
  for mode in ("stats", "eval", "sample", "edit"):
    run_lib.run(mode, config, eval_workdir, f"eval_{tag}")


if __name__ == "__main__":
  main(*sys.argv[1:])
