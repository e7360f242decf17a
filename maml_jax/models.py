"""The standard MAML benchmark models: Finn et al.'s sine MLP and few-shot conv net,
and the rank-one matrix factorization of Ji, Yang and Liang (section 5.1).

Each comes with its ``loss_fn(params, batch)`` (the whole contract with the
estimators) and an initialiser; see ``maml_jax/_src/models.py``.
"""

from maml_jax._src.models import batch_norm
from maml_jax._src.models import BATCH_NORM_EPS
from maml_jax._src.models import ConvBlock
from maml_jax._src.models import ConvNet
from maml_jax._src.models import init_convnet_params
from maml_jax._src.models import init_mf_params
from maml_jax._src.models import init_sine_params
from maml_jax._src.models import make_convnet_loss
from maml_jax._src.models import make_mse_loss
from maml_jax._src.models import MF_DIM
from maml_jax._src.models import mf_loss
from maml_jax._src.models import sine_loss
from maml_jax._src.models import SineMLP

__all__ = (
    'BATCH_NORM_EPS',
    'MF_DIM',
    'ConvBlock',
    'ConvNet',
    'SineMLP',
    'batch_norm',
    'init_convnet_params',
    'init_mf_params',
    'init_sine_params',
    'make_convnet_loss',
    'make_mse_loss',
    'mf_loss',
    'sine_loss',
)
