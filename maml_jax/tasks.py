"""Task samplers of the standard MAML benchmarks, pure JAX (run inside jit).

``sine_tasks`` (sine-wave regression), ``fewshot_tasks`` (N-way K-shot
classification from images on the device) and ``matrix_factorization_tasks``
(Ji, Yang and Liang's rank-one matrix factorization) return a
``maml_jax.Task`` with a leading task axis; see ``maml_jax/_src/tasks.py``.
"""

from maml_jax._src.tasks import fewshot_tasks
from maml_jax._src.tasks import matrix_factorization_tasks
from maml_jax._src.tasks import MF_SIGMA
from maml_jax._src.tasks import SINE_AMPLITUDE
from maml_jax._src.tasks import SINE_PHASE
from maml_jax._src.tasks import sine_points
from maml_jax._src.tasks import sine_task_params
from maml_jax._src.tasks import sine_tasks
from maml_jax._src.tasks import SINE_X

__all__ = (
    'MF_SIGMA',
    'SINE_AMPLITUDE',
    'SINE_PHASE',
    'SINE_X',
    'fewshot_tasks',
    'matrix_factorization_tasks',
    'sine_points',
    'sine_task_params',
    'sine_tasks',
)
