"""Figures for the README from the rounds `--mode edit` wrote: one PNG per task found under a workdir.

  python scripts/edit_figures.py --workdir runs/digits_vp --out docs --prefix digits_

Reads `<workdir>/eval/edit/step_<s>/<task>-<digest>/round_0.npz` (the newest step, the first round) and lays
it out wider than the per-round grids: inpaint as rows input / masked input / output, conditional as a row per
label, interpolate as a row per pair (image i, the decodes, image j), progressive as a row per sample along
reverse time, encode as rows input / output.
"""
import glob
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
import numpy as np  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "The workdir `--mode edit` wrote into.")
flags.DEFINE_string("eval_folder", "eval", "Its --eval_folder.")
flags.DEFINE_string("out", "docs", "Folder to write the PNGs into.")
flags.DEFINE_string("prefix", "", "File name prefix, e.g. digits_.")
flags.DEFINE_integer("scale", 4, "Pixels per image pixel.")
flags.mark_flags_as_required(["workdir"])


def _rows(task, d):
  """Rows of uint8 images (H, W, C) for the figure of `task` from its round's arrays."""
  if task == "inpaint":
    masked = np.where(d["masks"] > 0, d["inputs"], 128).astype(np.uint8)
    return [list(d["inputs"]), list(masked), list(d["outputs"])]
  if task == "colorize":
    return [list(d["inputs"]), list(d["grey"]), list(d["outputs"])]
  if task == "conditional":
    return [list(d["outputs"][d["labels"] == k]) for k in np.unique(d["labels"])]
  if task == "interpolate":
    return [[d["inputs"][i]] + list(d["outputs"][i]) + [d["inputs"][j]] for i, j in d["pairs"]]
  if task in ("progressive",):
    return [list(row) for row in d["outputs"]]
  if task == "encode":
    return [list(d["inputs"]), list(d["outputs"])]
  raise ValueError(f"no figure layout for task {task!r}")


def main(argv):
  del argv
  from score_sde import image_utils  # pylint: disable=g-import-not-at-top
  steps = glob.glob(os.path.join(FLAGS.workdir, FLAGS.eval_folder, "edit", "step_*"))
  if not steps:
    raise SystemExit(f"error: no --mode edit output under {FLAGS.workdir}/{FLAGS.eval_folder}/edit.")
  newest = max(steps, key=lambda p: int(p.rsplit("_", 1)[1]))
  os.makedirs(FLAGS.out, exist_ok=True)
  for folder in sorted(glob.glob(os.path.join(newest, "*-*"))):
    task = os.path.basename(folder).rsplit("-", 1)[0]
    path = os.path.join(folder, "round_0.npz")
    if not os.path.exists(path):
      continue
    with np.load(path) as d:
      rows = _rows(task, {k: d[k] for k in d.files})
    out = os.path.join(FLAGS.out, f"{FLAGS.prefix}{task}.png")
    image_utils.save_rows(rows, out, scale=FLAGS.scale)
    print(f"{task}: {len(rows)} rows of {max(len(r) for r in rows)} -> {out}")


if __name__ == "__main__":
  app.run(main)
