"""Few-shot image classification data: glyphs (offline) and Omniglot, on the device.

``load(dataset, ...)`` returns a ``fewshot_format.Splits`` of three
``FewShotData`` (meta-train, validation, test, disjoint by character): every
image of a split is one uint8 array [classes, instances, 28, 28], 255 is ink,
so tasks are drawn by indexing inside a compiled training loop
(``maml_jax.tasks.fewshot_tasks``), with no Python loop per task.

glyphs (``experiments.fewshot_glyphs``, the offline default): an
Omniglot-like data set rendered from the TrueType fonts that matplotlib
ships, split 70:10:20 by character, generated once per seed and cached as
.npz.

omniglot (``experiments.fewshot_omniglot``): the standard folders, Finn et
al.'s split: 1200 characters for meta-training, the rest held out (100 of
them for validation, the others for test), each character in 4 rotations
(0, 90, 180, 270 degrees) as 4 classes.
"""

from experiments import fewshot_glyphs
from experiments import fewshot_omniglot
from experiments.fewshot_format import IMAGE_SIZE

DATASETS = ('glyphs', 'omniglot')


def load(dataset, *, data_dir=None, cache_dir=None, seed=0, image_size=IMAGE_SIZE,
         max_classes=None, **omniglot_kwargs):
  """Loads ``dataset`` ('glyphs' from ``cache_dir``, 'omniglot' from ``data_dir``).

  ``max_classes`` limits glyphs to its first candidate characters (small data
  sets for smoke tests); ``omniglot_kwargs`` (``num_train_characters``,
  ``num_val_characters``) go to ``omniglot``.
  """
  if dataset == 'glyphs':
    if cache_dir is None:
      raise ValueError('glyphs needs a cache_dir (where the generated .npz is kept)')
    return fewshot_glyphs.glyphs(cache_dir, seed, image_size=image_size,
                                 max_classes=max_classes)
  if dataset == 'omniglot':
    if data_dir is None:
      raise ValueError('omniglot needs --data_dir: the folder holding images_background/ '
                       'and images_evaluation/')
    return fewshot_omniglot.omniglot(data_dir, seed, image_size=image_size,
                                     **omniglot_kwargs)
  raise ValueError(f'unknown dataset {dataset!r}; expected one of {DATASETS}')
