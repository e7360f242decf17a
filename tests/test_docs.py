"""The API reference builds from the docstrings, without warnings (BUILD.md, "Docs")."""

import subprocess
import sys

# The exact command BUILD.md gives, with the output folder in a temp dir.
COMMAND = [sys.executable, '-m', 'pdoc', '--docformat', 'google', 'maml_jax']


def test_api_reference_builds_without_warnings(tmp_path):
  proc = subprocess.run(COMMAND + ['-o', str(tmp_path)], capture_output=True,
                        text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  output = proc.stdout + proc.stderr
  assert 'Warn' not in output and 'Error' not in output, output[-3000:]
  pages = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob('*.html')}
  assert {'maml_jax.html', 'maml_jax/nn.html', 'maml_jax/models.html',
          'maml_jax/tasks.html'} <= pages, pages
  index = (tmp_path / 'maml_jax.html').read_text()
  for name in ('meta_gradient', 'make_train_step', 'adaptation_curve',
               'ggs_maml', 'choose_task_batching', 'LearnedInnerLR'):
    assert f'id="{name}"' in index, name
  assert 'id="conv_general_dilated"' in (tmp_path / 'maml_jax/nn.html').read_text()
