"""`--mode eval` end to end on a tiny trained digits model: reports, resumption at the unit level, bad input."""
import glob
import json
import os

import numpy as np
import pytest

from configs.vp import digits
from score_sde import checkpoint_wait, evaluate, train, train_state

pytestmark = pytest.mark.xdist_group("evaluate")  # its tests share the `trained` fixture


def tiny_config():
  config = digits.get_config()
  config.data.image_size = 8
  config.model.update(nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), num_scales=50)
  config.training.update(batch_size=16, n_iters=20, n_jitted_steps=1, log_freq=10, eval_freq=20, snapshot_freq=10,
                         snapshot_freq_for_preemption=10, snapshot_sampling=False)
  config.eval.update(begin_ckpt=2, end_ckpt=2, batch_size=128, enable_loss=True, enable_bpd=False, enable_vlb=False,
                     enable_sampling=False, bpd_num_repeats=1, ckpt_wait_secs=0)
  return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("trained"))
  train.train(tiny_config(), workdir)
  return workdir


def _report(workdir, folder, step=20):
  with open(os.path.join(workdir, folder, f"ckpt_{step}", "report.json")) as f:
    return json.load(f)


def _units(workdir, folder, kind, step=20):
  """The one folder of `kind`'s units (`<kind>-<digest>`) of checkpoint `step`."""
  (found,) = glob.glob(os.path.join(workdir, folder, f"ckpt_{step}", f"{kind}-*"))
  return found


def test_eval_killed_mid_run_resumes_without_redoing_units_and_gives_the_same_report(trained, monkeypatch):
  config = tiny_config()
  config.eval.update(enable_bpd=True, enable_vlb=True)
  config.eval.update(bpd_rtol=1e-3, bpd_atol=1e-3)
  full = evaluate.evaluate(config, trained, "eval_full")[20]
  assert {"eval_loss", "bpd", "vlb_bpd", "vlb_rate", "vlb_distortion"} <= set(full)
  assert full["bpd_examples"] == 297 and full["vlb_examples"] == 297  # the digits test split, padding dropped

  # The same eval, interrupted after its 4th unit of work (loss, then bpd batches).
  real_save, saved = evaluate._save_npz, []

  def dying_save(path, arrays):
    if len(saved) == 4:
      raise KeyboardInterrupt("killed")
    real_save(path, arrays)
    saved.append(path)

  monkeypatch.setattr(evaluate, "_save_npz", dying_save)
  with pytest.raises(KeyboardInterrupt):
    evaluate.evaluate(config, trained, "eval_resumed")
  monkeypatch.setattr(evaluate, "_save_npz", real_save)
  mtimes = {str(p): os.stat(p).st_mtime_ns for p in saved}
  resumed = evaluate.evaluate(config, trained, "eval_resumed")[20]
  assert {str(p): os.stat(p).st_mtime_ns for p in saved} == mtimes  # finished units were not redone
  timing = ("bpd_seconds_per_image", "vlb_seconds_per_image")
  assert {k: v for k, v in resumed.items() if k not in timing} == {k: v for k, v in full.items() if k not in timing}
  assert _report(trained, "eval_resumed") == resumed
  table = open(os.path.join(trained, "eval_resumed", "report.md")).read()
  assert "| 20 |" in table and "vlb_bpd" in table


def test_eval_reruns_keep_earlier_metrics_and_recompute_other_work(trained):
  config = tiny_config()
  config.eval.enable_vlb = True
  first = evaluate.evaluate(config, trained, "eval_rerun")[20]
  loss_units = _units(trained, "eval_rerun", "loss")
  loss_mtime = os.stat(os.path.join(loss_units, "loss.npz")).st_mtime_ns
  # A rerun with the VLB off keeps the VLB's numbers in the report (before, every vlb_* field was dropped).
  config.eval.enable_vlb = False
  second = evaluate.evaluate(config, trained, "eval_rerun")[20]
  assert {k: v for k, v in second.items() if k.startswith("vlb_")} == \
      {k: v for k, v in first.items() if k.startswith("vlb_")} and len([k for k in first if k.startswith("vlb_")]) >= 6
  assert os.stat(os.path.join(loss_units, "loss.npz")).st_mtime_ns == loss_mtime  # the same work: reused
  # The unclipped bound is other work: computed into its own folder, and it is the newest value reported.
  config.eval.update(enable_vlb=True, vlb_clip_denoised=False)
  third = evaluate.evaluate(config, trained, "eval_rerun")[20]
  assert third["vlb_units"] != first["vlb_units"] and third["vlb_clip_denoised"] is False
  assert third["vlb_bpd"] != first["vlb_bpd"]
  # Another eval batch size changes the loss's batches: computed anew, not read from the first folder.
  config.eval.update(enable_vlb=False, batch_size=64)
  fourth = evaluate.evaluate(config, trained, "eval_rerun")[20]
  assert fourth["eval_loss_units"] != first["eval_loss_units"] and fourth["eval_loss"] != first["eval_loss"]
  assert fourth["vlb_units"] == third["vlb_units"]  # merged from the third run
  with open(os.path.join(trained, "eval_rerun", "ckpt_20", "history.jsonl")) as f:
    assert len(f.readlines()) == 4
  table = open(os.path.join(trained, "eval_rerun", "report.md")).read()
  assert "vlb_bpd" in table and "eval_loss" in table


@pytest.mark.parametrize("dequantize", [False, True])
def test_eval_loss_matches_a_direct_computation(trained, dequantize):
  """On the test split dequantised exactly when training data is (data.uniform_dequantization), as in 2021."""
  from score_sde import config_checks, datasets, losses, parallel  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  config = tiny_config()
  config.data.uniform_dequantization = dequantize
  report = evaluate.evaluate(config, trained, f"eval_loss_{dequantize}")[20]
  sde, model = config_checks.validate_config(config)
  _, params = train_state.restore_ema_params(config, trained, model, parallel.make_mesh(), step=20)
  loss_fn = losses.get_loss_fn_from_config(config, sde, model, train=False)
  scaler = datasets.get_data_scaler(config)
  key = jax.random.PRNGKey(config.seed)
  batches = [b["image"] for b in datasets.eval_iterator(config, "test", dequantize=dequantize)
             if b["mask"].min() > 0]
  assert len(batches) == 2  # 297 test digits: two full batches of 128
  assert np.any(batches[0] * 255 % 1 > 1e-3) == dequantize
  direct = [float(loss_fn(params, scaler(x), jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(key, 20), 0), b)))
            for b, x in enumerate(batches)]
  np.testing.assert_allclose(report["eval_loss"], np.mean(direct), rtol=1e-5)


def test_bad_eval_requests_fail_clearly(tmp_path):
  config = tiny_config()
  config.eval.end_ckpt = 3
  with pytest.raises(ValueError, match=r"eval.end_ckpt=3 is step 30, beyond training.n_iters=20"):
    evaluate.evaluate(config, str(tmp_path), "eval")
  config = tiny_config()
  config.eval.enable_loss = False
  with pytest.raises(ValueError, match="nothing to evaluate"):
    evaluate.evaluate(config, str(tmp_path), "eval")
  config = tiny_config()
  with pytest.raises(ValueError, match=r"checkpoint of step 20 did not appear .* for 0 s .*no checkpoint there yet"):
    evaluate.evaluate(config, str(tmp_path), "eval")


def test_stats_mode_then_sample_quality_metrics(trained, tmp_path):
  from score_sde import evaluation  # pylint: disable=import-outside-toplevel
  config = tiny_config()
  config.eval.update(enable_loss=False, enable_sampling=True, num_samples=40, batch_size=32,
                     stats_dir=str(tmp_path / "stats"), classifier_path=str(tmp_path / "classifier.npz"))
  with pytest.raises(ValueError, match="--mode stats"):  # no reference statistics yet: refused before sampling
    evaluate.evaluate(config, trained, "eval_samples")
  path = evaluate.compute_stats(config)
  stats = evaluation.load_stats(path)
  assert stats["pool_3"].shape[0] == 1500  # every digit of the train split, once
  report = evaluate.evaluate(config, trained, "eval_samples")[20]
  assert report["num_samples"] == 40 and report["sampling_nfe"] == 50  # Euler-Maruyama, N = 50
  rounds = [np.load(os.path.join(_units(trained, "eval_samples", "samples"), f"samples_{r}.npz")) for r in (0, 1)]
  assert [r["samples"].shape for r in rounds] == [(32, 8, 8, 1), (8, 8, 8, 1)]
  assert all(r["samples"].dtype == np.uint8 for r in rounds)
  # The report's numbers are those of the saved features against the saved statistics.
  expected = evaluation.compute_metrics(np.concatenate([r["pool_3"] for r in rounds]),
                                        np.concatenate([r["logits"] for r in rounds]), stats)
  for key in ("fid", "inception_score", "kid"):
    np.testing.assert_allclose(report[key], expected[key], rtol=1e-12)
  assert report["fid"] > 0 and 1 <= report["inception_score"] <= 10
  # Another sampler is other work: drawn anew, scored anew (before, the old rounds' FID was reported under the
  # new settings); the first sampler's rounds stay, and so does its report line in history.jsonl.
  config.sampling.predictor = "reverse_diffusion"
  other = evaluate.evaluate(config, trained, "eval_samples")[20]
  assert other["samples_units"] != report["samples_units"] and other["fid"] != report["fid"]
  assert sorted(os.path.basename(p).split("-")[0] for p in
                glob.glob(os.path.join(trained, "eval_samples", "ckpt_20", "samples-*"))) == ["samples", "samples"]
  with open(os.path.join(trained, "eval_samples", "ckpt_20", "history.jsonl")) as f:
    assert [json.loads(line)["fid"] for line in f] == [report["fid"], other["fid"]]
  # TensorBoard (<eval_folder>/tensorboard): each run's metrics at the checkpoint's step, and its samples.
  assert train.logged_scalars(os.path.join(trained, "eval_samples"), "fid") == {20: pytest.approx(other["fid"])}
  assert (20, "samples") in train.logged_tags(os.path.join(trained, "eval_samples"))


def test_eval_waits_for_a_checkpoint_that_training_writes_later(tmp_path, monkeypatch):
  import threading  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from score_sde import checkpointing  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(checkpoint_wait, "_POLL_SECONDS", 0.05)
  workdir = str(tmp_path / "w")

  def write_later():
    writer = checkpointing.Checkpoints(workdir, async_save=False)
    writer.save(30, {"a": jnp.ones(3)}, snapshot=True)
    writer.close()

  timer = threading.Timer(0.5, write_later)
  timer.start()
  try:
    checkpoint_wait.wait_for_checkpoint(workdir, 30, timeout=60)  # returns once step 30 exists
  finally:
    timer.join()
  with pytest.raises(ValueError, match=r"checkpoint of step 40 did not appear .*steps there: \[30\]"):
    checkpoint_wait.wait_for_checkpoint(workdir, 40, timeout=0.2)


def test_eval_wait_refuses_steps_never_written_and_waits_while_training_writes(tmp_path, monkeypatch, capsys):
  import json as json_lib  # pylint: disable=import-outside-toplevel
  import threading  # pylint: disable=import-outside-toplevel
  import time  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from score_sde import checkpointing  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(checkpoint_wait, "_POLL_SECONDS", 0.05)
  workdir = str(tmp_path / "w")
  writer = checkpointing.Checkpoints(workdir, async_save=False)
  writer.save(30, {"a": jnp.ones(3)}, snapshot=True)
  writer.close()
  begin = time.time()
  # Older than a snapshot already written: never coming, refused at once with the steps that exist.
  with pytest.raises(ValueError, match=r"step 20 will never be written: a later snapshot \(step 30\).*\[30\]"):
    checkpoint_wait.wait_for_checkpoint(workdir, 20, timeout=3600)
  # Past the run's n_iters, or not one of its snapshot steps (config.json, as training records it).
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json_lib.dump({"training": {"n_iters": 100, "snapshot_freq": 10}}, f)
  with pytest.raises(ValueError, match=r"step 110 will never be written: the run .* trains to step 100"):
    checkpoint_wait.wait_for_checkpoint(workdir, 110, timeout=3600)
  with pytest.raises(ValueError, match=r"step 45 will never be written: .*snapshots every 10 steps"):
    checkpoint_wait.wait_for_checkpoint(workdir, 45, timeout=3600)
  assert time.time() - begin < 30  # none of them waited for the hour

  # The timeout counts time without any new checkpoint: a training that keeps writing is waited for longer.
  def keep_writing():
    w = checkpointing.Checkpoints(workdir, async_save=False)
    for step in (40, 50, 60, 70):
      time.sleep(0.3)
      w.save(step, {"a": jnp.ones(3)}, snapshot=True)
    w.close()

  thread = threading.Thread(target=keep_writing)
  thread.start()
  try:
    begin = time.time()
    checkpoint_wait.wait_for_checkpoint(workdir, 70, timeout=0.8)
    assert time.time() - begin > 0.8
  finally:
    thread.join()
  # Nothing writes: said once the wait has seen nothing new for _IDLE_NOTICE_SECONDS, then given up.
  monkeypatch.setattr(checkpoint_wait, "_IDLE_NOTICE_SECONDS", 0.1)
  with pytest.raises(ValueError, match=r"nothing new was written there for 0.4 s .*is training running"):
    checkpoint_wait.wait_for_checkpoint(workdir, 80, timeout=0.4)
  out = capsys.readouterr().out
  assert "waiting for the checkpoint of step 80" in out and "warning: nothing has written a checkpoint" in out
