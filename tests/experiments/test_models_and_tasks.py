"""The matrix-factorization task sampler and loss of the experiments match the paper.

The sine and few-shot ones are the library's (tests/lib/test_tasks.py, tests/lib/test_models.py).
"""

import jax
import jax.numpy as jnp
import numpy as np

from experiments import models
from experiments import tasks as task_lib

KEY = jax.random.PRNGKey(0)


def test_mf_loss_is_the_frobenius_matrix_loss():
  k1, k2 = jax.random.split(KEY)
  w = jax.random.normal(k1, (20,))
  z = jax.random.normal(k2, (3, 20))
  explicit = np.mean([0.25 * np.sum((np.outer(w, w) - np.outer(zi, zi)) ** 2)
                      for zi in np.asarray(z)])
  np.testing.assert_allclose(models.mf_loss(w, {'z': z}), explicit, rtol=1e-5)
  # Not the authors' code's (1/4)(|w|^2 - |z|^2)^2, a different function.
  bug = 0.25 * (jnp.dot(w, w) - jnp.dot(z[0], z[0])) ** 2
  assert not np.isclose(models.mf_loss(w, {'z': z[:1]}), bug, rtol=1e-3)


def test_mf_tasks_distribution():
  tasks = task_lib.matrix_factorization_tasks(KEY, 2000)
  z_s, z_q = np.asarray(tasks.support['z']), np.asarray(tasks.query['z'])
  assert z_s.shape == (2000, 1, 20)
  scale_s, scale_q = z_s.std(axis=(1, 2)), z_q.std(axis=(1, 2))
  assert scale_s.max() < 0.1 * 2.5 and np.corrcoef(scale_s, scale_q)[0, 1] > 0.8
  assert not np.allclose(z_s, z_q)  # independent draws, same sigma_i
