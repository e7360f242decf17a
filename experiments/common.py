"""Arm names and labels for ``experiments/plotting.py``, which imports them here.

The launchers' shared code lives in modules named for what they hold:
``config`` (flags, ``TrainConfig``), ``rundir`` (run folder, metrics files,
checkpoints), ``loop`` (the chunked training loop and its resume),
``training`` (supervised meta-training, ``--sweep``) and ``summaries``
(arm names, tables). Import from those; this module goes once plotting.py
imports ``experiments.summaries``.
"""

from experiments.summaries import arm_label
from experiments.summaries import LABELS
from experiments.summaries import row_arm

__all__ = ('LABELS', 'arm_label', 'row_arm')
