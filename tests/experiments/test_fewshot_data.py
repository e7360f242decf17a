"""Tests of the few-shot data sets: glyphs and Omniglot's layout.

Task sampling from them is the library's (tests/lib/test_tasks.py).
"""

import os

import numpy as np
from PIL import Image
from PIL import ImageDraw
import pytest

from experiments import fewshot_data
from experiments import fewshot_format
from experiments import fewshot_glyphs
from experiments import fewshot_omniglot

MAX_CLASSES = 40  # the first 40 candidate characters (ASCII): a fast glyphs data set.


@pytest.fixture(scope='module')
def glyph_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('glyphs'))


@pytest.fixture(scope='module')
def glyphs(glyph_dir):
  return fewshot_glyphs.glyphs(glyph_dir, seed=0, max_classes=MAX_CLASSES)


def _all_names(splits):
  return [n for data in splits for n in data.names]


def test_glyph_fonts_skip_last_resort_and_tex_symbols():
  names = [os.path.basename(f) for f in fewshot_glyphs.font_files()]
  assert len(names) >= 30
  assert not [n for n in names if n.startswith(('LastResort', 'cmsy10', 'cmex10'))]


def test_glyphs_shapes_dtypes_and_split_sizes(glyphs):
  sizes = [len(data.names) for data in glyphs]
  assert sum(sizes) >= 30  # few of the first 40 candidates are blank or duplicates.
  assert sizes[0] > sizes[2] >= sizes[1] >= 1
  for data in glyphs:
    assert data.images.dtype == np.uint8
    assert data.images.shape == (len(data.names), 20, 28, 28)
    assert all(n.startswith('glyphs/U+') for n in data.names)
    ink = data.images.reshape(data.images.shape[:2] + (-1,)).max(axis=-1)
    assert ink.min() >= 64  # every instance draws something (thin strokes are grey),
    assert np.median(data.images) == 0  # white on black.
    # Instances of a class differ (fonts and distortions), classes differ.
    assert not np.array_equal(data.images[0, 0], data.images[0, 1])


def test_glyphs_splits_are_disjoint(glyphs):
  names = _all_names(glyphs)
  assert len(names) == len(set(names))
  characters = [fewshot_glyphs.glyph_char(n) for n in names]
  assert len(characters) == len(set(characters))
  assert fewshot_glyphs.glyph_char('glyphs/U+03A9') == '\u03a9'


def test_glyphs_drop_homoglyphs():
  # Greek capital Alpha (U+0391) and Cyrillic A (U+0410) draw Latin 'A'.
  codes = (ord('A'), 0x391, 0x410, ord('B'))
  signatures = []
  renderer = fewshot_glyphs._Renderer(fewshot_glyphs.font_files(), 28)
  cover = fewshot_glyphs._coverage(fewshot_glyphs.font_files())
  for code in codes:
    signatures.append(fewshot_glyphs._glyph_class(renderer, code, cover[code], seed=0)[1])
  np.testing.assert_array_equal(fewshot_glyphs._near_duplicates(signatures),
                                [False, True, True, False])


def test_glyphs_cache_equals_regeneration(glyphs, glyph_dir):
  files = os.listdir(glyph_dir)
  assert files == [f'glyphs_v{fewshot_glyphs.GLYPHS_VERSION}_seed0_size28_max{MAX_CLASSES}.npz']
  loaded = fewshot_glyphs.glyphs(glyph_dir, seed=0, max_classes=MAX_CLASSES)
  regenerated = fewshot_glyphs.generate_glyphs(0, max_classes=MAX_CLASSES)
  for a, b, c in zip(glyphs, loaded, regenerated):
    assert a.names == b.names == c.names
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.images, c.images)


def test_glyphs_seed_changes_split_not_characters(glyphs):
  other = fewshot_glyphs.generate_glyphs(1, max_classes=MAX_CLASSES)
  assert sorted(_all_names(other)) == sorted(_all_names(glyphs))
  assert other.train.names != glyphs.train.names


def test_glyph_instances_depend_only_on_seed_and_character(glyphs):
  smaller = fewshot_glyphs.generate_glyphs(0, max_classes=MAX_CLASSES // 2)
  everything = {n: x for data in glyphs for n, x in zip(data.names, data.images)}
  for data in smaller:
    for name, images in zip(data.names, data.images):
      np.testing.assert_array_equal(images, everything[name])


# Omniglot, on a tiny data set written in the release's layout.

LAYOUT = {'images_background': {'Greek': 2, 'Latin': 2}, 'images_evaluation': {'Runic': 2}}


def _write_character(path, index, num_pngs=20):
  """``num_pngs`` 105x105 1-bit PNGs, black strokes on white, one shape per character."""
  os.makedirs(path)
  for drawer in range(num_pngs):
    image = Image.new('1', (105, 105), 1)
    draw = ImageDraw.Draw(image)
    x = 10 + 12 * index + drawer % 3
    draw.line([(x, 10), (x + 5, 60 + drawer), (90, 90 - 5 * index)], fill=0, width=6)
    image.save(os.path.join(path, f'{index:04d}_{drawer + 1:02d}.png'))


def _write_omniglot(root, layout=LAYOUT):
  index = 0
  for folder, alphabets in layout.items():
    for alphabet, num_characters in alphabets.items():
      for c in range(num_characters):
        _write_character(os.path.join(root, folder, alphabet, f'character{c + 1:02d}'), index)
        index += 1
  return str(root)


@pytest.fixture(scope='module')
def omniglot_dir(tmp_path_factory):
  return _write_omniglot(tmp_path_factory.mktemp('omniglot'))


def test_omniglot_splits_rotations_and_ink(omniglot_dir):
  splits = fewshot_omniglot.omniglot(omniglot_dir, seed=0, num_train_characters=3,
                                     num_val_characters=1)
  assert [len(d.names) for d in splits] == [12, 4, 8]  # 3 + 1 + 2 characters, x 4 rotations.
  characters = [{n.rsplit('/', 1)[0] for n in d.names} for d in splits]
  assert [len(c) for c in characters] == [3, 1, 2]
  assert not (characters[0] & characters[1] or characters[0] & characters[2]
              or characters[1] & characters[2])
  assert set.union(*characters) == {'omniglot/Greek/character01', 'omniglot/Greek/character02',
                                    'omniglot/Latin/character01', 'omniglot/Latin/character02',
                                    'omniglot/Runic/character01', 'omniglot/Runic/character02'}
  for data in splits:
    assert data.images.dtype == np.uint8
    assert data.images.shape == (len(data.names), 20, 28, 28)
    assert data.images[:, :, 0, 0].max() == 0 and data.images.max() == 255  # 255 = ink.
    for c in range(0, len(data.names), 4):
      assert [n.rsplit('/', 1)[1] for n in data.names[c:c + 4]] == ['rot0', 'rot90', 'rot180',
                                                                      'rot270']
      for k in range(4):
        np.testing.assert_array_equal(data.images[c + k], np.rot90(data.images[c], k, (1, 2)))
  # The same seed gives the same data; some other seed another split.
  again = fewshot_omniglot.omniglot(omniglot_dir, seed=0, num_train_characters=3,
                                    num_val_characters=1)
  for a, b in zip(splits, again):
    assert a.names == b.names
    np.testing.assert_array_equal(a.images, b.images)
  other = [fewshot_omniglot.omniglot(omniglot_dir, seed=s, num_train_characters=3,
                                     num_val_characters=1)
           for s in (1, 2, 3)]
  assert any(o.train.names != splits.train.names for o in other)


def test_omniglot_layout_errors(tmp_path, omniglot_dir):
  missing = str(tmp_path / 'nowhere')
  with pytest.raises(FileNotFoundError, match='nowhere.*images_background/<alphabet>'):
    fewshot_omniglot.omniglot(missing)
  half = tmp_path / 'half'
  _write_omniglot(half, {'images_background': {'Greek': 1}})
  with pytest.raises(FileNotFoundError, match='missing folder .*images_evaluation'):
    fewshot_omniglot.omniglot(str(half))
  (half / 'images_evaluation').mkdir()
  with pytest.raises(ValueError, match='no alphabet folders in .*images_evaluation'):
    fewshot_omniglot.omniglot(str(half))
  (half / 'images_evaluation' / 'Runic').mkdir()
  with pytest.raises(ValueError, match='no character folders in .*Runic'):
    fewshot_omniglot.omniglot(str(half))
  _write_character(str(half / 'images_evaluation' / 'Runic' / 'character01'), 0, num_pngs=19)
  with pytest.raises(ValueError, match='19 PNG files .*character01. Expected the Omniglot'):
    fewshot_omniglot.omniglot(str(half))
  (half / 'images_evaluation' / 'Runic' / 'character01' / 'z.png').write_bytes(b'not a png')
  with pytest.raises(ValueError, match='cannot read the image .*z.png'):
    fewshot_omniglot.omniglot(str(half), num_train_characters=1, num_val_characters=0)
  with pytest.raises(ValueError, match='has 6 characters: too few'):
    fewshot_omniglot.omniglot(omniglot_dir, num_train_characters=5, num_val_characters=1)


def test_load_dispatches(omniglot_dir, glyphs, glyph_dir):
  with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
    fewshot_data.load('mnist', data_dir=None, cache_dir=glyph_dir, seed=0)
  with pytest.raises(ValueError, match='has 6 characters'):  # the default 1200 training ones.
    fewshot_data.load('omniglot', data_dir=omniglot_dir, cache_dir=None, seed=0)
  with pytest.raises(ValueError, match='--data_dir'):
    fewshot_data.load('omniglot', data_dir=None, cache_dir=glyph_dir, seed=0)
  with pytest.raises(ValueError, match='cache_dir'):
    fewshot_data.load('glyphs', data_dir=None, cache_dir=None, seed=0)


def test_character_order_is_a_seeded_permutation():
  """The shuffle that splits both data sets' characters."""
  order = fewshot_format.character_order(10, 0)
  assert sorted(order) == list(range(10))
  np.testing.assert_array_equal(order, fewshot_format.character_order(10, 0))
  assert not np.array_equal(order, fewshot_format.character_order(10, 1))
