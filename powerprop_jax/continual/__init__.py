"""Continual learning: task streams, per-weight task ownership, PackNet and EfficientPackNet.

The algorithms are pure functions here; the driver that trains a stream is
:mod:`powerprop_jax.experiment.continual`.
"""

from powerprop_jax.continual.assignment import (assign, candidate_mask, capacity_used,
                                                check_task_id, eval_mask, finetune_masks,
                                                free_mask, init_owners, pruning_candidates,
                                                reinit_free, release, train_masks)
from powerprop_jax.continual.packnet import average_accuracy, choose_keep_fraction
from powerprop_jax.continual.tasks import PermutedTask, permutations, permute

__all__ = ["assign", "average_accuracy", "candidate_mask", "capacity_used", "check_task_id",
           "choose_keep_fraction", "eval_mask", "finetune_masks", "free_mask", "init_owners",
           "permutations", "permute", "PermutedTask", "pruning_candidates", "reinit_free",
           "release", "train_masks"]
