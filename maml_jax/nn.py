"""Layers for meta-learning conv nets: drop-in ops whose derivatives stay fast.

``conv_general_dilated`` has the signature and results of
``jax.lax.conv_general_dilated`` and plugs into Flax's
``nn.Conv(..., conv_general_dilated=maml_jax.nn.conv_general_dilated)``;
``max_pool`` has the signature of ``flax.linen.max_pool``. See
``maml_jax/_src/nn.py`` and docs/conv_nets.md for why.
"""

from maml_jax._src.nn import conv_general_dilated
from maml_jax._src.nn import is_canonical
from maml_jax._src.nn import max_pool
from maml_jax._src.nn import uses_fast_path

__all__ = (
    'conv_general_dilated',
    'is_canonical',
    'max_pool',
    'uses_fast_path',
)
