"""Keys of the input pipelines' randomness, shared by the in-memory (numpy) and streamed (tf.data) sources.

The data's randomness is keyed by (config.seed, stream id, ...), so it never coincides with the model's
randomness derived from the same seed, nor train order with train augmentation.
"""

TRAIN_ORDER, TRAIN_AUGMENT, EVAL_AUGMENT = 0x5D01, 0x5D02, 0x5D03

FOREVER = 1 << 62  # the end of an endless stream of positions (or passes)


def nonneg(seed):
  """SeedSequence and our int64 keys need a non-negative seed; wrap instead of rejecting negative ones."""
  return int(seed) % (1 << 63)
