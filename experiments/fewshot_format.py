"""What a few-shot data set is in memory: ``Splits`` of ``FewShotData``.

A data set is a ``Splits`` of three ``FewShotData``: every image of a split is
one uint8 array [classes, instances, 28, 28], so tasks are drawn by indexing
inside a compiled training loop (``maml_jax.tasks.fewshot_tasks``), with no
Python loop per task. Ink convention: 255 (1.0 after ``fewshot_tasks``) is
ink, 0 is background. ``experiments.fewshot_glyphs`` and
``experiments.fewshot_omniglot`` make one; ``experiments.fewshot_data.load``
picks between them.
"""

from typing import NamedTuple

import numpy as np


IMAGE_SIZE = 28
INSTANCES_PER_CLASS = 20


class FewShotData(NamedTuple):
  """All images of one split.

  Attributes:
    images: uint8 [num_classes, instances_per_class, H, W]; 255 is ink.
    names: the class names, one per class, e.g. 'glyphs/U+03A9' or
      'omniglot/Greek/character05/rot90'.
  """
  images: np.ndarray
  names: tuple


class Splits(NamedTuple):
  """Meta-train, validation and test splits, disjoint by character."""
  train: FewShotData
  val: FewShotData
  test: FewShotData


def character_order(num, seed):
  """A seeded shuffle of range(num): the order that splits characters."""
  return np.random.default_rng([seed, 0x5EED]).permutation(num)
