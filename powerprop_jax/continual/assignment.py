"""Per-weight task ownership: one int32 per parameter, 0 = free, t + 1 = owned by task t.

An owners tree has the params' structure. Prunable (predicate-selected) leaves are shared
out between tasks; non-prunable leaves (biases) are trained on task 0 only and then owned by
task 0 as a whole (all entries set to 1): later tasks use them frozen. Because a weight is
only ever assigned while free (``assign`` checks), the tasks' sets are disjoint by
construction.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from powerprop_jax import transform
from powerprop_jax.transform import ParamPredicate, weights_only

PyTree = Any


def _map(fn, tree: PyTree, predicate: ParamPredicate, *rest: PyTree) -> PyTree:
  """fn(leaf, prunable, *rest_leaves) over the tree."""
  chosen = transform.selected(tree, predicate)
  return jax.tree_util.tree_map(lambda x, c, *r: fn(x, c, *r), tree, chosen, *rest)


def init_owners(params: PyTree) -> PyTree:
  """All-free owners (int32 zeros with the params' shapes)."""
  return jax.tree_util.tree_map(lambda p: np.zeros(np.shape(p), np.int32), params)


def free_mask(owners: PyTree) -> PyTree:
  """owners == 0: the weights later tasks may still train."""
  return jax.tree_util.tree_map(lambda o: np.asarray(o) == 0, owners)


def check_task_id(task: int, num_trained: int) -> None:
  """Raises ValueError unless 0 <= task < num_trained."""
  if not 0 <= int(task) < num_trained:
    raise ValueError(f"task id must be in [0, {num_trained}) (tasks trained so far), "
                     f"got {task}")


def train_masks(owners: PyTree, task: int, predicate: ParamPredicate = weights_only
                ) -> tuple[PyTree, PyTree]:
  """(forward, grad) masks for training task ``task``.

  forward = owned by tasks <= task, or free; grad = free (non-prunable leaves: trained only on
  task 0, frozen afterwards).
  """
  def fwd(o, c):
    o = np.asarray(o)
    return (o <= task + 1) if c else np.ones(o.shape, bool)
  def grad(o, c):
    o = np.asarray(o)
    return (o == 0) if c else np.full(o.shape, task == 0)
  return _map(fwd, owners, predicate), _map(grad, owners, predicate)


def eval_mask(owners: PyTree, task: int, num_trained: int,
              predicate: ParamPredicate = weights_only) -> PyTree:
  """Test-time forward mask of ``task``: the weights owned by tasks <= task (1 <= o <= t+1)."""
  check_task_id(task, num_trained)
  def fn(o, c):
    o = np.asarray(o)
    return ((o >= 1) & (o <= task + 1)) if c else np.ones(o.shape, bool)
  return _map(fn, owners, predicate)


def assign(owners: PyTree, keep: PyTree, task: int, predicate: ParamPredicate = weights_only
           ) -> PyTree:
  """Gives the free weights where ``keep`` is True to ``task`` (owner task + 1).

  Non-prunable leaves go wholesale to task 0 when task == 0. Raises ValueError if ``keep``
  selects a weight that is not free.
  """
  def fn(o, c, k):
    o, k = np.asarray(o), np.asarray(k, bool)
    if not c:
      return np.where(o == 0, np.int32(1), o) if task == 0 else o
    if np.any(k & (o != 0)):
      raise ValueError(f"task {task} cannot take weights already owned by another task")
    return np.where(k, np.int32(task + 1), o).astype(np.int32)
  return _map(fn, owners, predicate, keep)


def capacity_used(owners: PyTree, num_tasks: int, predicate: ParamPredicate = weights_only
                  ) -> list[float]:
  """Fraction of all prunable weights owned by each task 0..num_tasks-1."""
  chosen = jax.tree_util.tree_leaves(transform.selected(owners, predicate))
  leaves = [np.asarray(o) for o, c in zip(jax.tree_util.tree_leaves(owners), chosen) if c]
  total = sum(o.size for o in leaves)
  return [sum(int(np.count_nonzero(o == t + 1)) for o in leaves) / max(total, 1)
          for t in range(num_tasks)]


def free_counts(owners: PyTree, predicate: ParamPredicate = weights_only) -> dict[str, int]:
  """Number of free weights per prunable leaf (by path)."""
  return {f"{module}/{name}": int(np.count_nonzero(np.asarray(o) == 0))
          for module, name, o in transform.selected_leaves(owners, predicate)}


def as_jnp(tree: PyTree) -> PyTree:
  return jax.tree_util.tree_map(jnp.asarray, tree)


# The mask algebra of one task of a stream (PackNet / EfficientPackNet), as named steps.


def reinit_free(params: PyTree, fresh: PyTree, owners: PyTree,
                predicate: ParamPredicate = weights_only) -> PyTree:
  """``params`` with every free prunable weight replaced by its value in ``fresh`` (a new
  initialisation: at alpha > 1 a weight at v = 0 could never move again)."""
  return _map(lambda p, c, o, n: jnp.where(np.asarray(o) == 0, n, p) if c else p,
              params, predicate, owners, fresh)


def pruning_candidates(grad_masks: PyTree, predicate: ParamPredicate = weights_only) -> PyTree:
  """The weights task t trained and may keep: its grad mask on prunable leaves, else none."""
  return _map(lambda g, c: np.asarray(g, bool) & c, grad_masks, predicate)


def candidate_mask(owners: PyTree, keep: PyTree, task: int,
                   predicate: ParamPredicate = weights_only) -> PyTree:
  """Forward mask scoring ``keep`` for ``task``: the weights of tasks < ``task`` (frozen),
  plus ``keep``; non-prunable leaves whole."""
  def fn(o, c, k):
    o = np.asarray(o)
    return (((o >= 1) & (o <= task)) | np.asarray(k, bool)) if c else np.ones(o.shape, bool)
  return _map(fn, owners, predicate, keep)


def release(params: PyTree, candidates: PyTree, keep: PyTree,
            predicate: ParamPredicate = weights_only) -> PyTree:
  """``params`` with the candidates not kept set to 0 (they are free again)."""
  return _map(lambda p, c, cand, k: jnp.where(np.asarray(cand) & ~np.asarray(k),
                                              jnp.zeros_like(p), p) if c else p,
              params, predicate, candidates, keep)


def finetune_masks(owners: PyTree, task: int, predicate: ParamPredicate = weights_only
                   ) -> tuple[PyTree, PyTree]:
  """(forward, grad) masks for fine-tuning ``task`` after its weights were assigned: forward =
  tasks <= task; grad = the task's own weights (non-prunable leaves: on task 0 only)."""
  def grad(o, c):
    o = np.asarray(o)
    return (o == task + 1) if c else np.full(o.shape, task == 0)
  return eval_mask(owners, task, task + 1, predicate), _map(grad, owners, predicate)
