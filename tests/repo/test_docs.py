"""The API reference builds from the docstrings, without warnings (BUILD.md, "Docs"),
and nothing in the repository but the tests of the deprecated names uses them."""

import ast
import json
import pathlib
import re
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]

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
  for name in ('meta_gradient', 'make_train_step', 'adaptation_curve', 'custom_estimator',
               'ggs_maml', 'choose_task_batching', 'LearnedInnerLR'):
    assert f'id="{name}"' in index, name
  assert 'id="conv_general_dilated"' in (tmp_path / 'maml_jax/nn.html').read_text()


# The deprecated names of the API (each still works, with a DeprecationWarning):
# functions, and keywords of functions (num_steps, now num_inner_steps).
_OLD_FUNCTIONS = ('estimator', 'no_hvp')
_OLD_KEYWORDS = {'adapt': 'num_steps', 'adaptation_curve': 'num_steps',
                 'init_inner_lr': 'num_steps'}
_OLD_IN_PROSE = re.compile(r'\b(mj|maml_jax)\.(estimator|no_hvp)\b(?!.*deprecated)')


def _old_calls(code):
  """'mj.estimator', 'mj.adapt(num_steps=)', ...: old names that ``code`` calls."""
  try:
    tree = ast.parse(code)
  except SyntaxError:
    return []
  found = []
  for node in ast.walk(tree):
    f = getattr(node, 'func', None)
    if not (isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name)
            and f.value.id in ('mj', 'maml_jax')):
      continue
    if f.attr in _OLD_FUNCTIONS:
      found.append(f'mj.{f.attr}')
    old = _OLD_KEYWORDS.get(f.attr)
    if old and any(k.arg == old for k in node.keywords):
      found.append(f'mj.{f.attr}({old}=)')
  return found


def _code(path):
  """The Python of a file: a module and its docstring examples, a page's
  Python blocks, a notebook's code cells."""
  text = path.read_text()
  if path.suffix == '.py':
    examples = '\n'.join(line.strip()[4:] for line in text.splitlines()
                         if line.strip()[:4] in ('>>> ', '... '))
    return [text, examples]
  if path.suffix == '.md':
    return re.findall(r'```python\n(.*?)```', text, re.S)
  return [''.join(c['source']) for c in json.loads(text)['cells']
          if c['cell_type'] == 'code']


def test_no_code_or_page_uses_a_deprecated_name():
  """The library, launchers, benchmarks, pages and notebook use the current
  names (mj.custom_estimator, hvp=None, num_inner_steps); only the tests of
  the aliases call the old ones."""
  paths = [p for folder in ('maml_jax', 'experiments', 'benchmarks', 'docs', 'notebooks')
           for p in sorted((REPO / folder).rglob('*'))
           if p.suffix in ('.py', '.md', '.ipynb')]
  paths += sorted(REPO.glob('*.md'))
  assert len(paths) > 30, paths
  used = {}
  for path in paths:
    found = [c for code in _code(path) for c in _old_calls(code)]
    found += [m.group(0) for m in _OLD_IN_PROSE.finditer(path.read_text())]
    if found:
      used[path.relative_to(REPO).as_posix()] = found
  assert not used, used
