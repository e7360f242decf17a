"""The glyphs data set: characters rendered from the fonts that matplotlib ships.

An Omniglot-like data set, offline (the few-shot launcher's default). A class
is one character covered by at least ``MIN_FONTS`` = 12 of the fonts; an
instance is the character in one of those fonts with its own small random
affine distortion. Splits are by character: 70% meta-train, 10% validation,
20% test (Omniglot's 1200:423 is 74:26). Cached as compressed .npz, generated
once from the seed. Measured with matplotlib 3.11 (37 fonts used): 2,329
characters are covered by 12 fonts, 2,185 stay after blank renderings and
homoglyphs are dropped (1530/218/437 classes for seed 0); generation takes
about 15 s on 2 CPU cores, the cache is 5.8 MB. 255 is ink: white strokes on
black (``fewshot_format``).
"""

import os
import time
import unicodedata

from absl import logging
import matplotlib
from matplotlib import ft2font
import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont

from experiments.fewshot_format import character_order
from experiments.fewshot_format import FewShotData
from experiments.fewshot_format import IMAGE_SIZE
from experiments.fewshot_format import INSTANCES_PER_CLASS
from experiments.fewshot_format import Splits


GLYPHS_VERSION = 1
GLYPHS_SPLIT = (0.7, 0.1, 0.2)  # train, val, test fractions of the characters.
MIN_FONTS = 12
_SUPERSAMPLE = 4  # render at 4x and box-filter down: antialiased, and warps stay sharp.
_EM = 0.75  # em size as a fraction of the frame.
_BASELINE = 0.78  # baseline height from the frame top, as a fraction of the frame.
# Fonts left out: the fallback font that draws every code point as a box, and
# TeX fonts whose code points name other glyphs (cmsy10 'a' is not an 'a').
_SKIP_FONTS = ('LastResort', 'cmsy10', 'cmex10')
# The remaining TeX (Computer Modern) fonts follow Unicode for ASCII letters and digits only.
_TEX_FONTS = ('cmb10', 'cmmi10', 'cmr10', 'cmss10', 'cmti10', 'cmtt10')
_TEX_CHARS = frozenset(map(ord, '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz'))
# Affine distortion of an instance: rotation (degrees), log-scale, shear, translation (pixels).
_ROTATION = 10.0
_LOG_SCALE = 0.1
_SHEAR = 0.15
_SHIFT = 1.5
_MIN_INK = 0.5  # a rendering with less ink (in full pixels at 28x28) is blank.
_NOTDEF = 0.15  # a rendering within this share of its ink of the font's .notdef is that box.
_SAME_DRAWING = 0.07  # unit-norm distance under which two characters are one drawing.
_CANDIDATE = 0.4  # looser distance that selects the pairs to compare font by font.


def font_files():
  """The TrueType fonts used: matplotlib's, minus LastResort and the TeX symbol fonts."""
  folder = os.path.join(matplotlib.get_data_path(), 'fonts', 'ttf')
  return [os.path.join(folder, f) for f in sorted(os.listdir(folder))
          if f.endswith('.ttf') and not f.startswith(_SKIP_FONTS)]


def _drawable(code):
  """Letters, numbers, punctuation and symbols: no space, control, combining or private use."""
  return unicodedata.category(chr(code))[0] in 'LNPS'


def _coverage(fonts):
  """{code point: [indices of the fonts whose character map holds it]}."""
  cover = {}
  for i, path in enumerate(fonts):
    tex = os.path.basename(path).startswith(_TEX_FONTS)
    for code in ft2font.FT2Font(path).get_charmap():
      if _drawable(code) and (not tex or code in _TEX_CHARS):
        cover.setdefault(code, []).append(i)
  return cover


class _Renderer:
  """Draws characters at ``_SUPERSAMPLE`` x the output size, one Pillow font per file."""

  def __init__(self, fonts, image_size):
    self.size = image_size
    self.frame = image_size * _SUPERSAMPLE
    self.fonts = [ImageFont.truetype(f, size=round(_EM * self.frame)) for f in fonts]
    # What each font draws for a code point it lacks (.notdef, often a box).
    self.notdef = [self.small(self.draw(chr(0x10FFFD), i)) for i in range(len(fonts))]

  def draw(self, char, font):
    """The character on the frame: a Pillow 'L' image, frame x frame pixels."""
    f = self.frame
    canvas = Image.new('L', (3 * f, 3 * f), 0)
    ImageDraw.Draw(canvas).text((1.5 * f, f + _BASELINE * f), char, fill=255,
                                font=self.fonts[font], anchor='ms')
    box = canvas.getbbox()
    if box is None or (box[0] >= f and box[1] >= f and box[2] <= 2 * f and box[3] <= 2 * f):
      return canvas.crop((f, f, 2 * f, 2 * f))
    # Too wide or tall, or off the frame: shrink (if needed) and centre it.
    ink = canvas.crop(box)
    scale = min(1.0, 0.9 * f / ink.width, 0.9 * f / ink.height)
    if scale < 1.0:
      ink = ink.resize((max(1, round(ink.width * scale)), max(1, round(ink.height * scale))),
                       Image.BOX)
    out = Image.new('L', (f, f), 0)
    out.paste(ink, ((f - ink.width) // 2, (f - ink.height) // 2))
    return out

  def small(self, big):
    """A frame box-filtered down to the output size, float32 in [0, 1]."""
    return np.asarray(big.reduce(_SUPERSAMPLE), np.float32) / 255.0

  def distort(self, big, rng):
    """A random small affine distortion of a frame, at the output size (uint8)."""
    angle = np.deg2rad(rng.uniform(-_ROTATION, _ROTATION))
    scale = np.exp(rng.uniform(-_LOG_SCALE, _LOG_SCALE, size=2))
    shear = rng.uniform(-_SHEAR, _SHEAR)
    shift = rng.uniform(-_SHIFT, _SHIFT, size=2) * _SUPERSAMPLE
    c, s = np.cos(angle), np.sin(angle)
    forward = np.array([[c, -s], [s, c]]) @ np.array([[1.0, shear], [0.0, 1.0]]) @ np.diag(scale)
    inverse = np.linalg.inv(forward)  # Pillow maps output pixels to input pixels.
    centre = np.full(2, self.frame / 2)
    offset = centre - inverse @ (centre + shift)
    data = (inverse[0, 0], inverse[0, 1], offset[0], inverse[1, 0], inverse[1, 1], offset[1])
    # Nearest-neighbour at 4x, then the 4x4 box filter: 16 samples per pixel, and fast.
    warped = big.transform(big.size, Image.AFFINE, data, resample=Image.NEAREST)
    return np.asarray(warped.reduce(_SUPERSAMPLE))


def _glyph_class(renderer, code, font_ids, seed):
  """One character's instances, or None if fewer than MIN_FONTS fonts draw it.

  Returns:
    (instances uint8 [20, size, size], signatures {font: float32 [size, size]}).
  """
  char = chr(code)
  bigs, signatures = {}, {}
  for font in font_ids:
    big = renderer.draw(char, font)
    small = renderer.small(big)
    ink = small.sum()
    if ink < _MIN_INK or np.abs(small - renderer.notdef[font]).sum() < _NOTDEF * ink:
      continue  # blank, or the font's box for a missing glyph.
    bigs[font], signatures[font] = big, small
  if len(bigs) < MIN_FONTS:
    return None
  # A class's instances depend only on the seed and the character.
  rng = np.random.default_rng([seed, code])
  order = rng.permutation(sorted(bigs))
  instances = np.stack([renderer.distort(bigs[order[i % len(order)]], rng)
                        for i in range(INSTANCES_PER_CLASS)])
  return instances, signatures


def _near_duplicates(signatures):
  """Flags every character drawn near-identically to an earlier one.

  Two characters are the same drawing if, in the median of the fonts that
  draw both, their unit-norm renderings are closer than ``_SAME_DRAWING``
  (Latin 'A', Greek Alpha and Cyrillic A, for example; Latin 'O' with breve and
  with caron, at 0.08, stay apart). Renderings are compared where they are
  drawn, so '.' and the middle dot differ. Candidate pairs come from the
  renderings averaged over each character's fonts, with a looser threshold.
  """
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  mean = unit(np.stack([np.mean([s.ravel() for s in sig.values()], axis=0)
                        for sig in signatures]))
  close = mean @ mean.T > 1 - _CANDIDATE**2 / 2  # |a - b| < _CANDIDATE.
  duplicate = np.zeros(len(signatures), bool)
  for i, j in zip(*np.nonzero(np.triu(close, k=1))):
    if duplicate[i] or duplicate[j]:
      continue
    common = sorted(signatures[i].keys() & signatures[j].keys())
    if not common:
      continue
    a = unit(np.stack([signatures[i][f].ravel() for f in common]))
    b = unit(np.stack([signatures[j][f].ravel() for f in common]))
    if np.median(np.linalg.norm(a - b, axis=1)) < _SAME_DRAWING:
      duplicate[j] = True
  return duplicate


def glyphs(cache_dir, seed=0, *, image_size=IMAGE_SIZE, max_classes=None):
  """The glyphs data set, from the cache in ``cache_dir`` or generated there.

  Classes are the characters that at least ``MIN_FONTS`` of matplotlib's fonts
  draw (blank renderings and the font's box for a missing glyph do not count),
  less characters drawn like an earlier one (homoglyphs). Each class has 20
  instances: instance i is the character in the i-th of a seeded shuffle of
  its fonts (cycled), with its own random rotation (+-10 degrees), scale
  (+-10% per axis), shear (+-0.15) and shift (+-1.5 pixels). 255 is ink.
  Characters are split 70:10:20 into train, val and test by a seeded shuffle.

  Args:
    cache_dir: folder of the .npz cache (created if missing).
    seed: seed of the distortions, font orders and split.
    image_size: side of the square images.
    max_classes: if set, only the first ``max_classes`` candidate characters
      (by code point) are tried: a small, fast data set for tests. A character's
      instances are the same as in the full data set.

  Returns:
    ``Splits`` with uint8 images [classes, 20, image_size, image_size].
  """
  name = f'glyphs_v{GLYPHS_VERSION}_seed{seed}_size{image_size}'
  if max_classes is not None:
    name += f'_max{max_classes}'
  path = os.path.join(cache_dir, name + '.npz')
  if os.path.exists(path):
    return _restore(path)
  start = time.perf_counter()
  splits = generate_glyphs(seed, image_size=image_size, max_classes=max_classes)
  seconds = time.perf_counter() - start
  os.makedirs(cache_dir, exist_ok=True)
  _save(path, splits)
  logging.info('glyphs: generated %s classes (train/val/test) of %d instances in %.1f s; '
               'cache %s is %.1f MB', '/'.join(str(len(d.names)) for d in splits),
               INSTANCES_PER_CLASS, seconds, path, os.path.getsize(path) / 1e6)
  return splits


def generate_glyphs(seed=0, *, image_size=IMAGE_SIZE, max_classes=None):
  """Renders the glyphs data set (see ``glyphs``), without the cache."""
  fonts = font_files()
  cover = _coverage(fonts)
  codes = sorted(c for c, ids in cover.items() if len(ids) >= MIN_FONTS)
  if max_classes is not None:
    codes = codes[:max_classes]
  renderer = _Renderer(fonts, image_size)
  kept, images, signatures = [], [], []
  for code in codes:
    made = _glyph_class(renderer, code, cover[code], seed)
    if made is not None:
      kept.append(code)
      images.append(made[0])
      signatures.append(made[1])
  duplicate = _near_duplicates(signatures)
  kept = [c for c, d in zip(kept, duplicate) if not d]
  images = np.stack([x for x, d in zip(images, duplicate) if not d])
  names = tuple(f'glyphs/U+{c:04X}' for c in kept)
  parts = _split_by_shuffle(len(kept), seed, GLYPHS_SPLIT)
  return Splits(*(FewShotData(images[np.sort(p)], tuple(names[i] for i in np.sort(p)))
                  for p in parts))


def glyph_char(name):
  """The character a glyphs class name stands for: 'glyphs/U+03A9' -> '\u03a9'."""
  return chr(int(name.rsplit('U+', 1)[1], 16))


def _save(path, splits):
  arrays = {}
  for split, data in splits._asdict().items():
    arrays[f'{split}_images'] = data.images
    arrays[f'{split}_names'] = np.array(data.names, dtype=np.str_)
  tmp = path + '.tmp.npz'
  np.savez_compressed(tmp, **arrays)
  os.replace(tmp, path)


def _restore(path):
  with np.load(path, allow_pickle=False) as f:
    return Splits(*(FewShotData(f[f'{s}_images'], tuple(str(n) for n in f[f'{s}_names']))
                    for s in Splits._fields))


def _split_by_shuffle(num, seed, fractions):
  """Index arrays of a seeded shuffle of range(num), cut by ``fractions``."""
  order = character_order(num, seed)
  cuts = np.round(np.cumsum(fractions)[:-1] * num).astype(int)
  return np.split(order, cuts)
