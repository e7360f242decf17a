"""One-off investigations: scripts that answered one question, kept to answer it again.

Not part of ``benchmarks.run`` and not tested; each one's docstring names the
commit its numbers were made at and what it found (the full write-up is in
BENCHMARKS.md). Run as ``python -m benchmarks.investigations.<name>``:

* ``profile_ggs``: where GGS-/ZO-MAML's sine meta-iteration spends its time
  (the Gaussian directions vs the math; maml_jax's own overhead in MAML).
* ``profile_learned_lr``: where a learned (Meta-SGD) inner step size costs
  time in MAML.
* ``repro_vmap_conv``: standalone repro of the jitted second-order gradient
  through a ``jnp.max`` pool that lost windows (issue 14's wrong conv-net
  meta-gradient).

Retired, its finding in BENCHMARKS.md: ``profile_convnet`` (one conv-net task's
XLA:CPU ops vs PyTorch's), ``git show 9679a65:benchmarks/profile_convnet.py``.
"""
