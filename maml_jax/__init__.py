"""maml_jax: multi-step MAML and its Hessian-free variants in JAX.

Ji, Yang, Liang, "Multi-Step Model-Agnostic Meta-Learning: Convergence and
Improved Algorithms" (arXiv 2002.07836). The contract with a model is one
function, ``loss_fn(params, batch) -> scalar``.
"""

from maml_jax import models
from maml_jax import nn
from maml_jax import tasks
from maml_jax._src.base import EstimatorAux
from maml_jax._src.base import HvpOracle
from maml_jax._src.base import MetaEstimator
from maml_jax._src.base import PerStep
from maml_jax._src.base import Sampled
from maml_jax._src.base import Task
from maml_jax._src.estimators import custom_estimator
from maml_jax._src.estimators import ESTIMATORS
from maml_jax._src.estimators import estimator  # deprecated: custom_estimator
from maml_jax._src.estimators import estimator_kwargs
from maml_jax._src.estimators import fo_maml
from maml_jax._src.estimators import ggs_maml
from maml_jax._src.estimators import hf_maml
from maml_jax._src.estimators import hyperparameters as estimator_hyperparameters
from maml_jax._src.estimators import make_estimator
from maml_jax._src.estimators import maml
from maml_jax._src.estimators import zo_maml
from maml_jax._src.inner import adapt
from maml_jax._src.inner import adaptation_curve
from maml_jax._src.inner import AdaptationCurve
from maml_jax._src.meta import check_task_batching
from maml_jax._src.meta import choose_task_batching
from maml_jax._src.meta import meta_gradient
from maml_jax._src.meta import MetaAux
from maml_jax._src.meta import num_tasks
from maml_jax._src.oracles import exact_hvp
from maml_jax._src.oracles import fd_hvp
from maml_jax._src.oracles import gaussian_directions
from maml_jax._src.oracles import ggs_hvp
from maml_jax._src.oracles import no_hvp  # deprecated: hvp=None
from maml_jax._src.oracles import task_keys
from maml_jax._src.oracles import TaskKeys
from maml_jax._src.oracles import zo_hvp
from maml_jax._src.sharding import constrain_tasks
from maml_jax._src.sharding import process_tasks
from maml_jax._src.sharding import replicate
from maml_jax._src.sharding import shard_process_tasks
from maml_jax._src.sharding import shard_tasks
from maml_jax._src.sharding import task_mesh
from maml_jax._src.step_sizes import init_inner_lr
from maml_jax._src.step_sizes import LearnedInnerLR
from maml_jax._src.step_sizes import partition_inner_lr
from maml_jax._src.training import init_train_state
from maml_jax._src.training import iteration_keys
from maml_jax._src.training import make_fused_train
from maml_jax._src.training import make_train_step
from maml_jax._src.training import TrainState

__version__ = '0.1.0'

__all__ = (
    'AdaptationCurve',
    'ESTIMATORS',
    'EstimatorAux',
    'HvpOracle',
    'LearnedInnerLR',
    'MetaAux',
    'MetaEstimator',
    'PerStep',
    'Sampled',
    'Task',
    'TaskKeys',
    'TrainState',
    'adapt',
    'adaptation_curve',
    'check_task_batching',
    'choose_task_batching',
    'constrain_tasks',
    'custom_estimator',
    'estimator',
    'estimator_hyperparameters',
    'estimator_kwargs',
    'exact_hvp',
    'fd_hvp',
    'fo_maml',
    'gaussian_directions',
    'ggs_hvp',
    'ggs_maml',
    'hf_maml',
    'init_train_state',
    'init_inner_lr',
    'iteration_keys',
    'make_estimator',
    'make_fused_train',
    'make_train_step',
    'maml',
    'meta_gradient',
    'models',
    'nn',
    'no_hvp',
    'num_tasks',
    'partition_inner_lr',
    'process_tasks',
    'replicate',
    'shard_process_tasks',
    'shard_tasks',
    'task_keys',
    'task_mesh',
    'tasks',
    'zo_hvp',
    'zo_maml',
)
