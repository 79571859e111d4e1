"""Continual learning: task streams, per-weight task ownership, PackNet and EfficientPackNet."""

from powerprop_jax.continual.assignment import (assign, capacity_used, check_task_id,
                                                eval_mask, free_mask, init_owners,
                                                train_masks)
from powerprop_jax.continual.packnet import (ContinualResult, choose_keep_fraction,
                                              run_continual)
from powerprop_jax.continual.tasks import PermutedTask, permutations, permute

__all__ = ["assign", "capacity_used", "check_task_id", "eval_mask", "free_mask",
           "init_owners", "train_masks", "ContinualResult", "choose_keep_fraction", "run_continual",
           "PermutedTask", "permutations", "permute"]
