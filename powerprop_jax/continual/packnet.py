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
from powerprop_jax import config as config_lib
from powerprop_jax import masks as masks_lib
from powerprop_jax import metrics as metrics_lib
from powerprop_jax import models, optim, train, transform
from powerprop_jax.continual import assignment
from powerprop_jax.continual import tasks as tasks_lib
from powerprop_jax.data import base as data_base
from powerprop_jax.data.base import Dataset
from powerprop_jax.sparsity import base as sparse_base

PyTree = Any


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
  num_trained: int                # tasks trained (< num_tasks if the capacity ran out)


def _permuted_batch(data, idx):
  """data = (Dataset, perm): images (B, D)[:, perm], gathered on device."""
  dataset, perm = data
  return {"image": dataset.images[idx][:, perm], "label": dataset.labels[idx]}


def choose_keep_fraction(fractions: np.ndarray, accuracy_at: Callable[[float], float],
                         target: float) -> tuple[float, float]:
  """EfficientPackNet's search: the first (sparsest) fraction of the ascending grid whose
  accuracy meets ``target`` (= gamma * P); the last fraction if none does. Returns
  (fraction, its accuracy)."""
  for fraction in fractions:
    accuracy = accuracy_at(float(fraction))
    if accuracy >= target:
      return float(fraction), accuracy
  return float(fractions[-1]), accuracy


def _union(a: PyTree, b: PyTree) -> PyTree:
  return jax.tree_util.tree_map(lambda x, y: np.asarray(x) | np.asarray(y), a, b)


def run_continual(config: ml_collections.ConfigDict, datasets: dict[str, Dataset],
                  workdir: Optional[str] = None, log: Callable[[str], None] = print
                  ) -> ContinualResult:
  """Trains ``config.continual.num_tasks`` Permuted-MNIST tasks in sequence.

  Each phase (train, fine-tune) runs through the training loop's pieces
  (``train.init_state``, one compiled ``train.make_chunk_fn`` step, ``train.run_steps``)
  with ``sparse_optimizer(inner, fixed_masks(forward, grad))``; every phase starts a fresh
  optimizer state, so a schedule restarts per phase. With ``workdir``, a checkpoint is
  written after every task and a rerun resumes at the next untrained task.
  """
  c = config.continual
  config_lib.validate_continual(c)
  reparam = transform.Reparam(transform.validate_alpha(config.alpha))
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
  if ckpt is not None:
    target = {"params": params, "net_state": net_state, "owners": owners, "acc": acc, **rec}
    got, step = ckpt.restore_latest_intact(target, log, allow_nonfinite=("acc", *rec))
    if got is not None:
      params, net_state, acc = got["params"], got["net_state"], np.asarray(got["acc"])
      owners = jax.tree_util.tree_map(lambda o: np.asarray(o, np.int32), got["owners"])
      rec = {k: np.asarray(got[k]) for k in rec}
      start_task = int(step)
      log(f"resumed after task {start_task - 1} from {workdir}")
  writer = (metrics_lib.MetricsWriter(workdir, start_step=start_task) if workdir
            else None)

  inner = optim.make_optimizer(config.optimizer, int(c.steps_per_task))

  def optimizer(fwd: PyTree, grad: PyTree):
    return sparse_base.sparse_optimizer(
        inner, sparse_base.fixed_masks(assignment.as_jnp(fwd), assignment.as_jnp(grad)))

  # fixed_masks' update reads the masks from the state: one compiled step serves every phase.
  all_true = jax.tree_util.tree_map(lambda p: np.ones(np.shape(p), bool), params)
  chunk_fn = train.make_chunk_fn(
      train.make_train_step(model, optimizer(all_true, all_true), reparam), _permuted_batch)
  evaluate = train.make_eval_fn(model, reparam)
  device_train = jax.device_put(datasets["train"])
  n_train = len(datasets["train"].labels)
  cache: dict[tuple[str, int], Dataset] = {}

  def split(name: str, t: int) -> Dataset:
    if (name, t) not in cache:
      cache[(name, t)] = jax.device_put(tasks_lib.permute(datasets[name], stream[t]))
    return cache[(name, t)]

  grid = masks_lib.keep_fractions(float(c.min_keep_fraction), int(c.num_keep_fractions))
  params_after, owners_after = [], []

  def run_phase(task, params, net_state, fwd, grad, steps, phase_seed):
    state = train.init_state(optimizer(fwd, grad), params, net_state,
                             jax.random.PRNGKey(phase_seed))
    phase_input = train.TrainInput(
        (device_train, jnp.asarray(stream[task].permutation)), _permuted_batch,
        lambda s, k: data_base.batch_indices(phase_seed, s, k, batch, n_train))
    last: dict[str, float] = {}

    def on_chunk(state, k, metrics):
      try:
        train.check_finite_loss(metrics, int(state.step), k,
                                float(config.optimizer.learning_rate))
      except train.TrainingDiverged as e:
        raise train.TrainingDiverged(f"task {task}: {e}") from None
      last.update({n: float(np.mean(v)) for n, v in metrics.items()})

    state = train.run_steps(state, chunk_fn, phase_input, steps, chunk, on_chunk)
    return state.params, state.net_state, last

  for t in range(start_task, n_tasks):
    t0 = time.time()
    if t > 0:
      free = assignment.free_counts(owners, pred)
      empty = [name for name, n in free.items() if n == 0]
      if empty:
        message = (f"no free weights left for task {t} of {n_tasks} in {empty}: the "
                   f"capacity is exhausted after {t} tasks")
        if c.stop_when_full:
          log(message + "; stopping (continual.stop_when_full)")
          break
        raise ValueError(message + " (lower gamma, raise prune_fraction, train fewer tasks "
                         "or set continual.stop_when_full=True)")
      new_v, _ = fresh_params(t)
      free_m = assignment.free_mask(owners)
      chosen = transform.selected(params, pred)
      params = jax.tree_util.tree_map(
          lambda f, c_, n, o: jnp.where(f, n, o) if c_ else o, free_m, chosen, new_v, params)
    fwd, grad = assignment.train_masks(owners, t, pred)
    params, net_state, m = run_phase(t, params, net_state, fwd, grad, int(c.steps_per_task),
                                     seed * 100_003 + 2 * t)
    val = split("validation", t)
    dense = evaluate(params, net_state, val, fwd)
    chosen = transform.selected(params, pred)
    # Candidates: the weights trained on t (free prunable weights).
    candidates = jax.tree_util.tree_map(lambda g, c_: np.asarray(g) & c_, grad, chosen)
    older = jax.tree_util.tree_map(lambda o: (np.asarray(o) >= 1) & (np.asarray(o) <= t),
                                   owners)
    weights = transform.effective_params(params, reparam.alpha, pred)
    nonprunable = jax.tree_util.tree_map(lambda c_, o: np.full(np.shape(o), not c_),
                                         chosen, owners)

    def keep_at(fraction: float) -> PyTree:
      """The top ``fraction`` of the weights trained on t, by |w| (scope: continual.scope)."""
      keep = masks_lib.magnitude_masks(weights, 1.0 - fraction, c.scope, pred, candidates)
      return jax.tree_util.tree_map(lambda k_, c_: np.asarray(k_) & c_, keep, chosen)

    def accuracy_at(fraction: float) -> float:
      mask = _union(_union(older, keep_at(fraction)), nonprunable)
      return evaluate(params, net_state, val, mask)

    if c.method == "packnet":
      fraction = 1.0 - float(c.prune_fraction)
      pruned = accuracy_at(fraction)
    else:
      fraction, pruned = choose_keep_fraction(grid, accuracy_at, float(c.gamma) * dense)
    keep = keep_at(fraction)
    owners = assignment.assign(owners, keep, t, pred)
    # Weights trained on t but not kept: zeroed and free (re-initialised by the next task).
    params = jax.tree_util.tree_map(
        lambda p, c_, cand, k: jnp.where(cand & ~k, jnp.zeros_like(p), p) if c_ else p,
        params, chosen, candidates, keep)
    if int(c.finetune_steps) > 0:
      fwd_ft = assignment.eval_mask(owners, t, t + 1, pred)
      grad_ft = jax.tree_util.tree_map(
          lambda o, c_: (np.asarray(o) == t + 1) if c_ else np.full(np.shape(o), t == 0),
          owners, chosen)
      params, net_state, _ = run_phase(t, params, net_state, fwd_ft, grad_ft,
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
    if writer is not None:
      writer.write({"step": t + 1, "task": t, "train_accuracy": m.get("accuracy", np.nan),
                    "dense_validation_accuracy": dense, "pruned_validation_accuracy": pruned,
                    "keep_fraction": fraction, "capacity_used": cap[t],
                    "total_capacity": float(sum(cap)),
                    "average_accuracy": float(np.mean(acc[t, :t + 1]))})
    if ckpt is not None:
      ckpt.save(t + 1, {"params": params, "net_state": net_state, "owners": owners,
                        "acc": acc, **rec})
  if writer is not None:
    writer.close()
  if ckpt is not None:
    ckpt.close()
  return ContinualResult(acc, assignment.capacity_used(owners, n_tasks, pred),
                         [float(x) for x in rec["keep"]], [float(x) for x in rec["dense_val"]],
                         [float(x) for x in rec["pruned_val"]], params, net_state, owners,
                         params_after, owners_after, int(np.sum(~np.isnan(rec["keep"]))))


def average_accuracy(acc: np.ndarray) -> float:
  """Mean over the tasks seen of the last trained row of the accuracy matrix (the accuracy
  of every task after the last one trained)."""
  trained = [i for i in range(len(acc)) if np.isfinite(acc[i]).any()]
  return float(np.nanmean(acc[trained[-1]])) if trained else float("nan")
