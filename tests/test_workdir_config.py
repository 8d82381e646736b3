"""A workdir remembers the config that created it: another run's config is refused, listing what differs."""
import json

import pytest

from configs.subvp import digits as subvp_digits
from configs.vp import digits as vp_digits
from score_sde import train, workdir_config


def test_same_run_continues_and_its_schedule_may_change(tmp_path):
  config = vp_digits.get_config()
  workdir_config.record(config, tmp_path)
  stored = json.loads((tmp_path / "config.json").read_text())
  assert stored["training"]["sde"] == "vpsde" and stored["model"]["nf"] == config.model.nf
  config.training.n_iters *= 2
  config.training.update(log_freq=10, eval_freq=20, snapshot_freq=40)
  config.eval.num_samples = 7
  config.sampling.method = "ode"
  config.data.data_dir = "/elsewhere"
  workdir_config.check(config, tmp_path)  # allowed: nothing that defines the run changed


def test_another_run_is_refused_with_the_differing_keys(tmp_path):
  workdir_config.record(vp_digits.get_config(), tmp_path)
  other = subvp_digits.get_config()
  diffs = workdir_config.differences(json.loads((tmp_path / "config.json").read_text()), other)
  assert any(d.startswith("training.sde 'vpsde' there, 'subvpsde' here") for d in diffs), diffs
  with pytest.raises(ValueError, match=r"holds a run of another config \(.*training.sde 'vpsde' there, 'subvpsde' "
                     r"here.*\); use a new --workdir"):
    workdir_config.check(other, tmp_path)
  changed = vp_digits.get_config()
  changed.training.batch_size *= 2
  changed.model.dropout = 0.3
  with pytest.raises(ValueError, match=r"model.dropout 0.0 there, 0.3 here; training.batch_size 64 there, 128 here") as info:
    workdir_config.check(changed, tmp_path)
  assert "\n" not in str(info.value)


def test_a_workdir_without_config_json_gets_one(tmp_path):
  config = vp_digits.get_config()
  workdir_config.check(config, tmp_path)
  assert json.loads((tmp_path / "config.json").read_text())["model"]["name"] == config.model.name


def _tiny(config):
  config.data.image_size = 8
  config.model.update(nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), num_scales=25)
  config.training.update(batch_size=4, n_iters=2, n_jitted_steps=1, log_freq=1, eval_freq=2, snapshot_freq=2,
                         snapshot_freq_for_preemption=2, snapshot_sampling=False)
  return config


def test_a_subvp_config_does_not_continue_a_vp_run(tmp_path):
  """Same shapes, other SDE: before config.json it trained on as if it were the same run."""
  workdir = str(tmp_path)
  train.train(_tiny(vp_digits.get_config()), workdir)
  subvp = _tiny(subvp_digits.get_config())
  subvp.training.n_iters = 4
  with pytest.raises(ValueError, match=r"training.sde 'vpsde' there, 'subvpsde' here"):
    train.train(subvp, workdir)
  finished = _tiny(vp_digits.get_config())
  finished.training.n_iters = 1
  with pytest.raises(ValueError, match=r"is at step 2, past training.n_iters=1: raise training.n_iters"):
    train.train(finished, workdir)
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["2"]
