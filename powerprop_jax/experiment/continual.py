"""The continual-learning driver: PackNet / EfficientPackNet over a Permuted-MNIST stream.

For task t (all with one shared model and a single 10-way head):
1. Free prunable weights are re-initialised (``assignment.reinit_free``; the layer's standard
   init mapped through ``inverse_powerprop``: at alpha > 1 a weight at v = 0 could never move).
2. Train ``steps_per_task`` steps: forward mask = weights owned by tasks <= t plus the free
   ones, grad mask = the free ones (``assignment.train_masks`` in ``sparse_optimizer``, so
   earlier tasks' weights are bit-identical afterwards). Biases train on task 0 only.
3. Choose which of the weights trained on t (``assignment.pruning_candidates``) to keep, per
   layer by |w|: PackNet the top (1 - prune_fraction); EfficientPackNet the smallest keep
   fraction of ``geomspace(min_keep_fraction, 1, num_keep_fractions)`` whose validation
   accuracy (no fine-tuning) is at least gamma * P (``packnet.choose_keep_fraction``).
4. The kept weights become task t's; the rest are set to 0 and freed (``assignment.release``).
5. Fine-tune the kept weights for ``finetune_steps`` (``assignment.finetune_masks``), then
   freeze them. Test time: task j uses the weights of tasks <= j only (``eval_mask``).

Each phase runs through the training driver (``train.init_state``, one compiled
``train.make_chunk_fn`` step, ``train.run_steps``, ``train.check_finite_loss``). With a
workdir the stream is a run like any other: the workdir is locked, its defining config
recorded and checked on a rerun, a checkpoint (tagged with the run's identity) written after
every task, and a rerun resumes at the next untrained task.
"""

from __future__ import annotations

import time
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from powerprop_jax import checks, curves
from powerprop_jax import masks as masks_lib
from powerprop_jax import optim, transform
from powerprop_jax.continual import assignment, packnet
from powerprop_jax.continual import tasks as tasks_lib
from powerprop_jax.experiment import checkpoint as checkpoint_lib
from powerprop_jax.experiment import metrics as metrics_lib
from powerprop_jax.experiment import models, train
from powerprop_jax.experiment import workdir as workdir_lib
from powerprop_jax.experiment.data import base as data_base
from powerprop_jax.experiment.data.base import Dataset
from powerprop_jax.sparsity import base as sparse_base

PyTree = Any
Log = Callable[[str], None]
METHODS = ("packnet", "efficient_packnet")


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


class CapacityExhausted(checks.UserError):
  """A layer has no free weight left for the next task (and stop_when_full is off)."""


def check_config(c: Any) -> None:
  """Checks the ``continual`` section (one line naming the bad field and its valid range)."""
  checks.choice(c.method, "continual.method", METHODS)
  checks.fraction(c.gamma, "continual.gamma", 0.0, 1.0, closed_low=False, closed_high=True)
  checks.fraction(c.prune_fraction, "continual.prune_fraction", 0.0, 1.0, closed_low=False)
  checks.integer(c.num_tasks, "continual.num_tasks", 1)
  checks.integer(c.steps_per_task, "continual.steps_per_task", 1)
  checks.integer(c.finetune_steps, "continual.finetune_steps")
  checks.integer(c.permutation_seed, "continual.permutation_seed")
  checks.choice(c.scope, "continual.scope", curves.SCOPES)
  checks.fraction(c.min_keep_fraction, "continual.min_keep_fraction", 0.0, 1.0,
                  closed_low=False, closed_high=True)
  checks.integer(c.num_keep_fractions, "continual.num_keep_fractions", 1)


def summary(result: ContinualResult, config: Any) -> dict[str, Any]:
  """The record of one stream that both continual scripts write (JSON-ready)."""
  n = result.num_trained
  return {"method": config.continual.method, "alpha": float(config.alpha),
          "seed": int(config.seed), "tasks_accommodated": n,
          "capacity_used": result.capacity[:n], "total_capacity": float(sum(result.capacity)),
          "keep_fraction": result.keep_fraction[:n], "dense_val": result.dense_val[:n],
          "pruned_val": result.pruned_val[:n],
          "average_accuracy": packnet.average_accuracy(result.acc),
          "acc": [[None if np.isnan(a) else float(a) for a in row[:n]]
                  for row in result.acc[:n]]}


def _permuted_batch(data, idx):
  """data = (Dataset, perm): images (B, D)[:, perm], gathered on device."""
  dataset, perm = data
  return {"image": dataset.images[idx][:, perm], "label": dataset.labels[idx]}


class _Stream:
  """What every task of one stream shares: model, optimizer factory, compiled step, data."""

  def __init__(self, config: Any, datasets: dict[str, Dataset]):
    c = config.continual
    self.config = config
    self.reparam = transform.Reparam(transform.validate_alpha(config.alpha))
    self.model = models.model_from_config(config.model)
    self.tasks = tasks_lib.permutations(int(c.num_tasks), datasets["train"].images.shape[1],
                                        int(c.permutation_seed))
    self.datasets = datasets
    self.inner = optim.make_optimizer(config.optimizer, int(c.steps_per_task))
    # fixed_masks' update reads the masks from the state: one compiled step serves every phase.
    params, _ = self.fresh_params(0)
    all_true = jax.tree_util.tree_map(lambda p: np.ones(np.shape(p), bool), params)
    self.chunk_fn = train.make_chunk_fn(
        train.make_train_step(self.model, self.optimizer(all_true, all_true), self.reparam),
        _permuted_batch)
    self.evaluate = train.make_eval_fn(self.model, self.reparam)
    self.device_train = jax.device_put(datasets["train"])
    self._splits: dict[tuple[str, int], Dataset] = {}

  def fresh_params(self, task: int) -> tuple[PyTree, PyTree]:
    key = jax.random.fold_in(jax.random.PRNGKey(int(self.config.seed)), task)
    params, net_state = self.model.init(key, self.datasets["train"].images[:1],
                                        is_training=True)
    return (transform.reparameterise_init(params, self.reparam.alpha, self.reparam.predicate),
            net_state)

  def optimizer(self, fwd: PyTree, grad: PyTree):
    return sparse_base.sparse_optimizer(
        self.inner, sparse_base.fixed_masks(assignment.as_jnp(fwd), assignment.as_jnp(grad)))

  def split(self, name: str, task: int) -> Dataset:
    if (name, task) not in self._splits:
      self._splits[(name, task)] = jax.device_put(
          tasks_lib.permute(self.datasets[name], self.tasks[task]))
    return self._splits[(name, task)]

  def train_phase(self, task: int, params: PyTree, net_state: PyTree, fwd: PyTree,
                  grad: PyTree, steps: int, phase_seed: int):
    """``steps`` steps of task ``task`` under (fwd, grad) masks; a fresh optimizer state."""
    cfg = self.config
    batch, n_train = int(cfg.train.batch_size), len(self.datasets["train"].labels)
    state = train.init_state(self.optimizer(fwd, grad), params, net_state,
                             jax.random.PRNGKey(phase_seed))
    phase_input = train.TrainInput(
        (self.device_train, jnp.asarray(self.tasks[task].permutation)), _permuted_batch,
        lambda s, k: data_base.batch_indices(phase_seed, s, k, batch, n_train))
    last: dict[str, float] = {}

    def on_chunk(state, k, metrics):
      try:
        train.check_finite_loss(metrics, int(state.step), k,
                                float(cfg.optimizer.learning_rate))
      except train.TrainingDiverged as e:
        raise train.TrainingDiverged(f"task {task}: {e}") from None
      last.update({n: float(np.mean(v)) for n, v in metrics.items()})

    state = train.run_steps(state, self.chunk_fn, phase_input, steps,
                            int(cfg.train.chunk_steps), on_chunk)
    return state.params, state.net_state, last


def _choose_keep(stream: _Stream, params, net_state, owners, candidates, task: int,
                 dense: float) -> tuple[PyTree, float, float]:
  """(keep mask, keep fraction, its validation accuracy P_s) of task ``task``."""
  c, pred = stream.config.continual, stream.reparam.predicate
  weights = transform.effective_params(params, stream.reparam.alpha, pred)
  val = stream.split("validation", task)

  def keep_at(fraction: float) -> PyTree:
    """The top ``fraction`` of the candidates by |w| (scope: continual.scope)."""
    return assignment.pruning_candidates(
        masks_lib.magnitude_masks(weights, 1.0 - fraction, c.scope, pred, candidates), pred)

  def accuracy_at(fraction: float) -> float:
    return stream.evaluate(params, net_state, val,
                           assignment.candidate_mask(owners, keep_at(fraction), task, pred))

  if c.method == "packnet":
    fraction = 1.0 - float(c.prune_fraction)
    pruned = accuracy_at(fraction)
  else:
    grid = masks_lib.keep_fractions(float(c.min_keep_fraction), int(c.num_keep_fractions))
    fraction, pruned = packnet.choose_keep_fraction(grid, accuracy_at, float(c.gamma) * dense)
  return keep_at(fraction), fraction, pruned


def run_continual(config: Any, datasets: dict[str, Dataset], workdir: Optional[str] = None,
                  log: Log = print, allow_changed_config: bool = False) -> ContinualResult:
  """Trains ``config.continual.num_tasks`` Permuted-MNIST tasks in sequence (module doc).

  With ``workdir``: the workdir is locked for the run, a workdir recorded with other
  defining fields is refused (unless ``allow_changed_config``), a checkpoint is written after
  every task and a rerun resumes at the next untrained task.
  """
  check_config(config.continual)
  if workdir is None:
    return _run(config, datasets, None, log)
  with workdir_lib.WorkdirLock(workdir):
    workdir_lib.check_same_run(workdir, config, override=allow_changed_config, log=log)
    workdir_lib.record_run(workdir, config)
    return _run(config, datasets, workdir, log)


def _run(config: Any, datasets: dict[str, Dataset], workdir: Optional[str], log: Log
         ) -> ContinualResult:
  c = config.continual
  stream = _Stream(config, datasets)
  pred = stream.reparam.predicate
  n_tasks, seed = int(c.num_tasks), int(config.seed)
  params, net_state = stream.fresh_params(0)
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
  writer = metrics_lib.MetricsWriter(workdir, start_step=start_task) if workdir else None
  params_after, owners_after = [], []
  try:
    for t in range(start_task, n_tasks):
      t0 = time.time()
      if t > 0:
        empty = [name for name, n in assignment.free_counts(owners, pred).items() if n == 0]
        if empty:
          message = (f"no free weights left for task {t} of {n_tasks} in {empty}: the "
                     f"capacity is exhausted after {t} tasks")
          if c.stop_when_full:
            log(message + "; stopping (continual.stop_when_full)")
            break
          raise CapacityExhausted(message + " (lower gamma, raise prune_fraction, train "
                                  "fewer tasks or set continual.stop_when_full=True)")
        params = assignment.reinit_free(params, stream.fresh_params(t)[0], owners, pred)
      fwd, grad = assignment.train_masks(owners, t, pred)
      params, net_state, m = stream.train_phase(t, params, net_state, fwd, grad,
                                                int(c.steps_per_task), seed * 100_003 + 2 * t)
      dense = stream.evaluate(params, net_state, stream.split("validation", t), fwd)
      candidates = assignment.pruning_candidates(grad, pred)
      keep, fraction, pruned = _choose_keep(stream, params, net_state, owners, candidates, t,
                                            dense)
      owners = assignment.assign(owners, keep, t, pred)
      params = assignment.release(params, candidates, keep, pred)
      if int(c.finetune_steps) > 0:
        fwd_ft, grad_ft = assignment.finetune_masks(owners, t, pred)
        params, net_state, _ = stream.train_phase(t, params, net_state, fwd_ft, grad_ft,
                                                  int(c.finetune_steps),
                                                  seed * 100_003 + 2 * t + 1)
      rec["keep"][t], rec["dense_val"][t], rec["pruned_val"][t] = fraction, dense, pruned
      for j in range(t + 1):
        acc[t, j] = stream.evaluate(params, net_state, stream.split("test", j),
                                    assignment.eval_mask(owners, j, t + 1, pred))
      params_after.append(jax.device_get(params))
      owners_after.append(owners)
      cap = assignment.capacity_used(owners, n_tasks, pred)
      log(f"task {t}: train_acc={m.get('accuracy', float('nan')):.4f} P={dense:.4f} "
          f"P_s={pruned:.4f} keep={fraction:.4f} capacity={cap[t]:.4f} "
          f"(total {sum(cap):.4f}) test_acc[{t}]=" +
          " ".join(f"{a:.4f}" for a in acc[t, :t + 1]) + f" [{time.time() - t0:.1f}s]")
      if ckpt is not None:   # on disk before the task's record (the run's progress)
        ckpt.save(t + 1, {"params": params, "net_state": net_state, "owners": owners,
                          "acc": acc, **rec}, wait=True)
      if writer is not None:
        writer.write({"step": t + 1, "task": t, "train_accuracy": m.get("accuracy", np.nan),
                      "dense_validation_accuracy": dense, "pruned_validation_accuracy": pruned,
                      "keep_fraction": fraction, "capacity_used": cap[t],
                      "total_capacity": float(sum(cap)),
                      "average_accuracy": float(np.mean(acc[t, :t + 1]))})
  finally:
    if writer is not None:
      writer.close()
    if ckpt is not None:
      ckpt.close()
  return ContinualResult(acc, assignment.capacity_used(owners, n_tasks, pred),
                         [float(x) for x in rec["keep"]], [float(x) for x in rec["dense_val"]],
                         [float(x) for x in rec["pruned_val"]], params, net_state, owners,
                         params_after, owners_after, int(np.sum(~np.isnan(rec["keep"]))))
