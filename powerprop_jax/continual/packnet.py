"""PackNet and EfficientPackNet (the paper's Algorithm 1) on a stream of tasks.

For task t (all with one shared model and a single 10-way head):
1. Free prunable weights are re-initialised (the layer's standard init mapped through
   ``inverse_powerprop``; at alpha > 1 a weight at v = 0 could never move again).
2. Train ``steps_per_task`` steps: forward mask = weights owned by tasks <= t plus the free
   ones, grad mask = the free ones (``sparse_optimizer``, so earlier tasks' weights are
   bit-identical afterwards). Biases are trained on task 0 only and then frozen.
3. Choose which of the weights trained on t to keep, per layer by |w|:
   * packnet: the top (1 - prune_fraction);
   * efficient_packnet: the smallest keep fraction p in the ascending geometric grid
     ``geomspace(min_keep_fraction, 1, num_keep_fractions)`` whose validation accuracy
     P_s (no fine-tuning) satisfies P_s >= gamma * P, P the unpruned validation accuracy.
4. The kept weights become task t's (owner t + 1); the rest are set to 0 and freed.
5. Fine-tune the kept weights for ``finetune_steps`` (forward = tasks <= t only), then
   freeze them. Test time: task j uses the weights of tasks <= j only.
"""

from __future__ import annotations

import time
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from powerprop_jax import checkpoint as checkpoint_lib
from powerprop_jax import models, train, transform
from powerprop_jax.continual import assignment
from powerprop_jax.continual import tasks as tasks_lib
from powerprop_jax.data import Dataset
from powerprop_jax.sparsity import base as sparse_base

PyTree = Any
METHODS = ("packnet", "efficient_packnet")
SCOPES = ("layerwise", "global")


class ContinualResult(NamedTuple):
  acc: np.ndarray                 # (N, N) test accuracy on task j after task i; NaN for j > i
  capacity: list[float]           # fraction of prunable weights owned by each task
  keep_fraction: list[float]      # fraction of the free weights each task kept
  dense_val: list[float]          # P: validation accuracy of task t before pruning
  pruned_val: list[float]         # P_s of the chosen mask (before fine-tuning)
  params: PyTree                  # final stored params (v)
  net_state: PyTree
  owners: PyTree                  # int32 owners tree (0 free, t + 1 task t)
  params_after_task: list[PyTree]  # stored params after each task trained in this call
  owners_after_task: list[PyTree]  # owners after each task trained in this call


def keep_grid(min_keep: float, num: int) -> np.ndarray:
  """Ascending keep fractions geomspace(min_keep, 1, num) (the last one is 1: always met)."""
  if not 0.0 < min_keep <= 1.0 or num < 1:
    raise ValueError(f"keep grid needs min_keep_fraction in (0, 1] and num_keep_fractions "
                     f">= 1, got {min_keep}, {num}")
  return np.geomspace(min_keep, 1.0, num)


def validate_config(c: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the bad field and its valid range."""
  if c.method not in METHODS:
    raise ValueError(f"continual.method must be one of {METHODS}, got {c.method!r}")
  if not 0.0 < float(c.gamma) <= 1.0:
    raise ValueError(f"continual.gamma must be in (0, 1], got {c.gamma}")
  if not 0.0 < float(c.prune_fraction) < 1.0:
    raise ValueError(f"continual.prune_fraction must be in (0, 1), got {c.prune_fraction}")
  if int(c.num_tasks) < 1:
    raise ValueError(f"continual.num_tasks must be >= 1, got {c.num_tasks}")
  if int(c.steps_per_task) < 1 or int(c.finetune_steps) < 0:
    raise ValueError(f"continual.steps_per_task must be >= 1 and finetune_steps >= 0, got "
                     f"{c.steps_per_task}, {c.finetune_steps}")
  keep_grid(float(c.min_keep_fraction), int(c.num_keep_fractions))
  _check_scope(c.get("scope", "layerwise"))


def _check_scope(scope: str) -> None:
  if scope not in SCOPES:
    raise ValueError(f"continual.scope must be 'layerwise' or 'global', got {scope!r}")


def _passthrough() -> sparse_base.SparsityMethod:
  """Masks set from outside (in the SparseState) and never changed by the method."""
  def init(params):
    ones = jax.tree_util.tree_map(lambda p: jnp.ones(jnp.shape(p), bool), params)
    return sparse_base.MaskUpdate(params, ones, ones, ())
  def update(params, dense_grads, masks, grad_masks, state, step):
    del dense_grads, step
    return sparse_base.MaskUpdate(params, masks, grad_masks, state)
  return sparse_base.SparsityMethod(init, update)


def _permuted_batch(data, idx):
  """data = (Dataset, perm): images (B, D)[:, perm], gathered on device."""
  dataset, perm = data
  return {"image": dataset.images[idx][:, perm], "label": dataset.labels[idx]}


def make_keep_fn(weights: PyTree, candidates: PyTree, scope: str,
                 predicate: transform.ParamPredicate) -> Callable[[float], PyTree]:
  """``keep(fraction)``: the candidates (weights trained on the current task) to keep.

  scope "layerwise": per prunable leaf, the top round(fraction * n_candidates) by |w|;
  "global": the top round(fraction * n_candidates_total) over all prunable leaves together.
  Ties go to the lower (flat, then leaf) index. Non-prunable leaves are all True. The sort is
  done once, so trying many fractions is cheap.
  """
  _check_scope(scope)
  leaves, treedef = jax.tree_util.tree_flatten(weights)
  chosen = jax.tree_util.tree_leaves(transform.selected(weights, predicate))
  cands = [np.asarray(c, bool).ravel() for c in jax.tree_util.tree_leaves(candidates)]
  scores = [np.where(c, np.abs(np.asarray(w, np.float32)).ravel(), -1.0)
            for w, c in zip(leaves, cands)]
  idx = [i for i, c in enumerate(chosen) if c]
  if scope == "layerwise":
    orders = {i: np.argsort(-scores[i], kind="stable")[:int(cands[i].sum())] for i in idx}
  else:
    flat = np.concatenate([scores[i] for i in idx])
    order = np.argsort(-flat, kind="stable")[:int(sum(cands[i].sum() for i in idx))]
    offsets = np.cumsum([0] + [scores[i].size for i in idx])

  def keep(fraction: float) -> PyTree:
    out = [np.ones(np.shape(w), bool) for w in leaves]
    for i in idx:
      out[i] = np.zeros(scores[i].size, bool)
    if scope == "layerwise":
      for i in idx:
        out[i][orders[i][:int(round(fraction * orders[i].size))]] = True
    else:
      top = order[:int(round(fraction * order.size))]
      for n, i in enumerate(idx):
        sel = top[(top >= offsets[n]) & (top < offsets[n + 1])]
        out[i][sel - offsets[n]] = True
    for i in idx:
      out[i] = out[i].reshape(np.shape(leaves[i]))
    return jax.tree_util.tree_unflatten(treedef, out)

  return keep


def _union(a: PyTree, b: PyTree) -> PyTree:
  return jax.tree_util.tree_map(lambda x, y: np.asarray(x) | np.asarray(y), a, b)


def run_continual(config: ml_collections.ConfigDict, datasets: dict[str, Dataset],
                  workdir: Optional[str] = None, log: Callable[[str], None] = print
                  ) -> ContinualResult:
  """Trains ``config.continual.num_tasks`` Permuted-MNIST tasks in sequence.

  With ``workdir``, a checkpoint is written after every task and a rerun resumes at the next
  untrained task.
  """
  c = config.continual
  validate_config(c)
  reparam = train.Reparam(transform.validate_alpha(config.alpha))
  pred = reparam.predicate
  n_tasks, seed = int(c.num_tasks), int(config.seed)
  batch, chunk = int(config.train.batch_size), int(config.train.chunk_steps)
  stream = tasks_lib.permutations(n_tasks, datasets["train"].images.shape[1],
                                  int(c.permutation_seed))
  model = models.model_from_config(config.model)
  sample = datasets["train"].images[:1]

  def fresh_params(task: int) -> tuple[PyTree, PyTree]:
    key = jax.random.fold_in(jax.random.PRNGKey(seed), task)
    params, net_state = model.init(key, sample, is_training=True)
    return transform.reparameterise_init(params, reparam.alpha, pred), net_state

  params, net_state = fresh_params(0)
  owners = assignment.init_owners(params)
  acc = np.full((n_tasks, n_tasks), np.nan)
  rec = {k: np.full((n_tasks,), np.nan) for k in ("keep", "dense_val", "pruned_val")}
  start_task = 0
  ckpt = checkpoint_lib.Checkpointer(workdir) if workdir else None
  if ckpt is not None and ckpt.latest_step() is not None:
    target = {"params": params, "net_state": net_state, "owners": owners, "acc": acc, **rec}
    got = ckpt.restore(target)
    params, net_state, acc = got["params"], got["net_state"], np.asarray(got["acc"])
    owners = jax.tree_util.tree_map(lambda o: np.asarray(o, np.int32), got["owners"])
    rec = {k: np.asarray(got[k]) for k in rec}
    start_task = int(ckpt.latest_step())
    log(f"resumed after task {start_task - 1} from {workdir}")

  # Every phase (train, fine-tune) starts a fresh optimizer state: a schedule restarts per phase.
  tx = sparse_base.sparse_optimizer(
      train.make_optimizer(config.optimizer, int(c.steps_per_task)), _passthrough())
  chunk_fn = train.make_chunk_fn(train.make_train_step(model, tx, reparam), _permuted_batch)
  evaluate = train.make_eval_fn(model, reparam)
  device_train = jax.device_put(datasets["train"])
  n_train = len(datasets["train"].labels)
  cache: dict[tuple[str, int], Dataset] = {}

  def split(name: str, t: int) -> Dataset:
    if (name, t) not in cache:
      cache[(name, t)] = jax.device_put(tasks_lib.permute(datasets[name], stream[t]))
    return cache[(name, t)]

  grid = keep_grid(float(c.min_keep_fraction), int(c.num_keep_fractions))
  params_after, owners_after = [], []

  def run_phase(params, net_state, fwd, grad, steps, phase_seed):
    opt_state = tx.init(params)._replace(masks=assignment.as_jnp(fwd),
                                         grad_masks=assignment.as_jnp(grad))
    state = train.TrainState(jnp.zeros([], jnp.int32), params, net_state, opt_state,
                             jax.random.PRNGKey(phase_seed))
    state = jax.tree_util.tree_map(jnp.copy, state)
    data = (device_train, jnp.asarray(stream_t.permutation))
    s, metrics = 0, {}
    while s < steps:
      k = min(chunk, steps - s)
      idx = train.batch_indices(phase_seed, s, k, batch, n_train)
      state, metrics = chunk_fn(state, data, idx)
      s += k
    return state.params, state.net_state, {n: float(v) for n, v in metrics.items()}

  for t in range(start_task, n_tasks):
    t0 = time.time()
    stream_t = stream[t]
    if t > 0:
      free = assignment.free_counts(owners, pred)
      empty = [name for name, n in free.items() if n == 0]
      if empty:
        raise ValueError(f"no free weights left for task {t} of {n_tasks} in {empty}: the "
                         f"capacity is exhausted after {t} tasks (lower gamma, raise "
                         f"prune_fraction or train fewer tasks)")
      new_v, _ = fresh_params(t)
      free_m = assignment.free_mask(owners)
      chosen = transform.selected(params, pred)
      params = jax.tree_util.tree_map(
          lambda f, c_, n, o: jnp.where(f, n, o) if c_ else o, free_m, chosen, new_v, params)
    fwd, grad = assignment.train_masks(owners, t, pred)
    params, net_state, m = run_phase(params, net_state, fwd, grad, int(c.steps_per_task),
                                     seed * 100_003 + 2 * t)
    val = split("validation", t)
    dense = evaluate(params, net_state, val, fwd)
    # Candidates: the weights trained on t (free prunable weights).
    candidates = jax.tree_util.tree_map(lambda g, c_: np.asarray(g) & c_, grad,
                                        transform.selected(params, pred))
    older = jax.tree_util.tree_map(lambda o: (np.asarray(o) >= 1) & (np.asarray(o) <= t),
                                   owners)
    weights = transform.effective_params(params, reparam.alpha, pred)
    keep_fn = make_keep_fn(weights, candidates, c.get("scope", "layerwise"), pred)
    nonprunable_true = jax.tree_util.tree_map(lambda c_, o: np.full(np.shape(o), not c_),
                                              transform.selected(owners, pred), owners)
    if c.method == "packnet":
      fraction = 1.0 - float(c.prune_fraction)
      keep = keep_fn(fraction)
      pruned = evaluate(params, net_state, val, _union(_union(older, keep), nonprunable_true))
    else:
      for fraction in grid:
        keep = keep_fn(float(fraction))
        pruned = evaluate(params, net_state, val,
                          _union(_union(older, keep), nonprunable_true))
        if pruned >= float(c.gamma) * dense:
          break
    owners = assignment.assign(owners, keep, t, pred)
    chosen = transform.selected(params, pred)
    # Weights trained on t but not kept: zeroed and free (re-initialised by the next task).
    params = jax.tree_util.tree_map(
        lambda p, c_, cand, k: jnp.where(cand & ~k, jnp.zeros_like(p), p) if c_ else p,
        params, chosen, candidates, keep)
    if int(c.finetune_steps) > 0:
      fwd_ft = assignment.eval_mask(owners, t, t + 1, pred)
      grad_ft = jax.tree_util.tree_map(
          lambda o, c_: (np.asarray(o) == t + 1) if c_ else np.full(np.shape(o), t == 0),
          owners, chosen)
      params, net_state, _ = run_phase(params, net_state, fwd_ft, grad_ft,
                                       int(c.finetune_steps), seed * 100_003 + 2 * t + 1)
    rec["keep"][t], rec["dense_val"][t], rec["pruned_val"][t] = fraction, dense, pruned
    for j in range(t + 1):
      acc[t, j] = evaluate(params, net_state, split("test", j),
                           assignment.eval_mask(owners, j, t + 1, pred))
    params_after.append(jax.device_get(params))
    owners_after.append(owners)
    cap = assignment.capacity_used(owners, n_tasks, pred)
    log(f"task {t}: train_acc={m.get('accuracy', float('nan')):.4f} P={dense:.4f} "
        f"P_s={pruned:.4f} keep={fraction:.4f} capacity={cap[t]:.4f} "
        f"(total {sum(cap):.4f}) test_acc[{t}]=" +
        " ".join(f"{a:.4f}" for a in acc[t, :t + 1]) + f" [{time.time() - t0:.1f}s]")
    if ckpt is not None:
      ckpt.save(t + 1, {"params": params, "net_state": net_state, "owners": owners,
                        "acc": acc, **rec})
  if ckpt is not None:
    ckpt.close()
  return ContinualResult(acc, assignment.capacity_used(owners, n_tasks, pred),
                         [float(x) for x in rec["keep"]], [float(x) for x in rec["dense_val"]],
                         [float(x) for x in rec["pruned_val"]], params, net_state, owners,
                         params_after, owners_after)


def average_accuracy(acc: np.ndarray) -> float:
  """Mean over tasks of the final row of the accuracy matrix (accuracy after all tasks)."""
  return float(np.nanmean(acc[-1]))
