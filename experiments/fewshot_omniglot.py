"""Omniglot, read from the folders of its release, in Finn et al.'s split.

The standard folders (images_background/ and images_evaluation/, each
alphabet/character/*.png): 1200 characters for meta-training, the rest held
out (100 of them for validation, the others for test), each character in 4
rotations (0, 90, 180, 270 degrees) as 4 classes. The PNGs (black strokes on
white) are inverted on reading, as in Finn et al.'s (2017) loader: 255 is ink
(``fewshot_format``).
"""

import os
import time

from absl import logging
import numpy as np
from PIL import Image

from experiments.fewshot_format import character_order
from experiments.fewshot_format import FewShotData
from experiments.fewshot_format import IMAGE_SIZE
from experiments.fewshot_format import INSTANCES_PER_CLASS
from experiments.fewshot_format import Splits


OMNIGLOT_FOLDERS = ('images_background', 'images_evaluation')
OMNIGLOT_LAYOUT = ('<data_dir>/images_background/<alphabet>/<character>/*.png and '
                   '<data_dir>/images_evaluation/<alphabet>/<character>/*.png, at least '
                   f'{INSTANCES_PER_CLASS} PNGs per character (the Omniglot release, unzipped)')
ROTATIONS = (0, 90, 180, 270)


def _subfolders(path):
  return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith('.'))


def _layout_error(problem, path):
  return ValueError(f'{problem} {path}. Expected the Omniglot layout {OMNIGLOT_LAYOUT}.')


def omniglot_characters(data_dir):
  """Every character of an Omniglot folder, checked against the layout.

  Returns:
    A sorted list of (name, png paths): name is 'alphabet/character', the
    first 20 PNGs of the character folder by file name.

  Raises:
    FileNotFoundError: a missing folder.
    ValueError: a folder not laid out as ``OMNIGLOT_LAYOUT`` says.
  """
  if not os.path.isdir(data_dir):
    raise FileNotFoundError(f'no Omniglot folder at {data_dir}. Expected {OMNIGLOT_LAYOUT}.')
  characters = []
  for folder in OMNIGLOT_FOLDERS:
    root = os.path.join(data_dir, folder)
    if not os.path.isdir(root):
      raise FileNotFoundError(f'missing folder {root}. Expected {OMNIGLOT_LAYOUT}.')
    alphabets = _subfolders(root)
    if not alphabets:
      raise _layout_error('no alphabet folders in', root)
    for alphabet in alphabets:
      names = _subfolders(os.path.join(root, alphabet))
      if not names:
        raise _layout_error('no character folders in', os.path.join(root, alphabet))
      for character in names:
        path = os.path.join(root, alphabet, character)
        pngs = sorted(f for f in os.listdir(path) if f.lower().endswith('.png'))
        if len(pngs) < INSTANCES_PER_CLASS:
          raise _layout_error(f'{len(pngs)} PNG files (need {INSTANCES_PER_CLASS}) in', path)
        characters.append((f'{alphabet}/{character}',
                           [os.path.join(path, f) for f in pngs[:INSTANCES_PER_CLASS]]))
  return sorted(characters)


def _read_ink(path, image_size):
  """One Omniglot PNG as uint8 [size, size], 255 = ink (the PNG's black strokes)."""
  try:
    with Image.open(path) as image:
      grey = image.convert('L')
  except (OSError, ValueError) as e:
    raise ValueError(f'cannot read the image {path} ({e}). Expected {OMNIGLOT_LAYOUT}.') from e
  ink = Image.fromarray(255 - np.asarray(grey))
  return np.asarray(ink.resize((image_size, image_size), Image.LANCZOS))


def omniglot(data_dir, seed=0, *, image_size=IMAGE_SIZE, num_train_characters=1200,
             num_val_characters=100):
  """Omniglot in Finn et al.'s (2017) split, each character in 4 rotations.

  Reads every character of both folders (1623 in the release), inverts the
  PNGs (255 = ink) and resizes them to ``image_size`` (Lanczos, antialiased).
  A seeded shuffle of all characters gives ``num_train_characters`` for
  meta-training, as in Finn et al.; of the held-out rest, the first
  ``num_val_characters`` are the validation split and the others (323 in the
  release) the test split. Every character becomes 4 classes, rotated by 0,
  90, 180 and 270 degrees (counter-clockwise), named e.g.
  'omniglot/Greek/character05/rot90'; the rotations of a character stay in
  its split.

  Args:
    data_dir: folder holding images_background/ and images_evaluation/.
    seed: seed of the split.
    image_size: side of the square images.
    num_train_characters: characters for meta-training.
    num_val_characters: held-out characters for validation.

  Returns:
    ``Splits`` with uint8 images [4 x characters, 20, image_size, image_size].

  Raises:
    FileNotFoundError: missing folders.
    ValueError: a wrong layout or unreadable file, or fewer characters than
      the split needs (at least one test character).
  """
  characters = omniglot_characters(data_dir)
  num = len(characters)
  if num_train_characters < 1 or num_val_characters < 0 or (
      num_train_characters + num_val_characters >= num):
    raise ValueError(f'{data_dir} has {num} characters: too few for {num_train_characters} '
                     f'training and {num_val_characters} validation characters and a test split')
  start = time.perf_counter()
  images = np.stack([np.stack([_read_ink(p, image_size) for p in paths])
                     for _, paths in characters])
  logging.info('omniglot: read %d characters from %s in %.1f s', num, data_dir,
               time.perf_counter() - start)
  order = character_order(num, seed)
  cut = num_train_characters + num_val_characters
  parts = (order[:num_train_characters], order[num_train_characters:cut], order[cut:])

  def rotated(part):
    part = np.sort(part)
    x = np.stack([np.rot90(images[part], k, axes=(2, 3)) for k in range(4)], axis=1)
    names = tuple(f'omniglot/{characters[i][0]}/rot{degrees}'
                  for i in part for degrees in ROTATIONS)
    return FewShotData(x.reshape((-1,) + images.shape[1:]), names)

  return Splits(*(rotated(p) for p in parts))
