"""One training loop for every experiment: jitted ``lax.scan`` over chunks of steps.

The stored params are ``v``; each step computes the effective weights
``w = masks * powerprop(v, alpha)`` (masks from the optimizer state, if any), the loss and its
gradient ``g_w`` w.r.t. ``w`` (dense: also at masked entries), and
``g_v = g_w * alpha |v|^(alpha-1)`` by the VJP of the power alone, i.e. straight through the
mask, as Top-KAST prescribes; the sparse optimizer then keeps only the entries its
``grad_masks`` allow. The optimizer gets ``g_v`` and, as ``dense_grads``, ``g_w`` (what RigL
grows by). Data sit on the device; each chunk of
``chunk_steps`` steps receives a (chunk_steps, batch) array of example indices computed on the
host from (seed, step), so a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, NamedTuple, Optional

import haiku as hk
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from powerprop_jax import checkpoint as checkpoint_lib
from powerprop_jax import masks as masks_lib
from powerprop_jax import parallel
from powerprop_jax import transform
from powerprop_jax.data import Dataset
from powerprop_jax.data import augment as augment_lib
from powerprop_jax.sparsity import base as sparse_base
from powerprop_jax.sparsity import registry

PyTree = Any
Batch = dict[str, jax.Array]


class TrainState(NamedTuple):
  step: jax.Array          # () int32
  params: PyTree           # stored params (v where reparameterised)
  net_state: PyTree        # Haiku state (batch-norm statistics)
  opt_state: optax.OptState
  rng: jax.Array           # raw uint32 PRNG key


class Reparam(NamedTuple):
  """Which params are reparameterised, and with what power."""
  alpha: float = 1.0
  predicate: transform.ParamPredicate = transform.weights_only


def effective_weights(params: PyTree, opt_state: optax.OptState, reparam: Reparam) -> PyTree:
  """What the model computes with: masks * powerprop(v) (masks from a sparse optimizer)."""
  w = transform.effective_params(params, reparam.alpha, reparam.predicate)
  return sparse_base.forward_params(w, opt_state)


def make_optimizer(config: ml_collections.ConfigDict, total_steps: int
                   ) -> optax.GradientTransformation:
  """SGD (optionally momentum/Nesterov) or Adam, with an optional schedule and weight decay.

  config fields: name, learning_rate, momentum, nesterov, weight_decay, schedule
  ("constant" | "cosine" | "piecewise"), warmup_steps, boundaries (fractions of training),
  decay_factor.
  """
  lr = config.learning_rate
  if lr <= 0:
    raise ValueError(f"optimizer.learning_rate must be > 0, got {lr}")
  schedule_name = config.get("schedule", "constant")
  warmup = int(config.get("warmup_steps", 0))
  if schedule_name == "constant":
    schedule = optax.constant_schedule(lr)
  elif schedule_name == "cosine":
    schedule = optax.cosine_decay_schedule(lr, max(total_steps - warmup, 1))
  elif schedule_name == "piecewise":
    schedule = optax.piecewise_constant_schedule(
        lr, {int(b * total_steps): config.get("decay_factor", 0.1)
             for b in config.get("boundaries", ())})
  else:
    raise ValueError(f"optimizer.schedule must be constant|cosine|piecewise, got "
                     f"{schedule_name!r}")
  if warmup:
    schedule = optax.join_schedules(
        [optax.linear_schedule(0.0, lr, warmup), schedule], [warmup])
  name = config.get("name", "sgd")
  if name == "sgd":
    momentum = config.get("momentum", 0.0) or None
    tx = optax.sgd(schedule, momentum=momentum, nesterov=bool(config.get("nesterov", False)))
  elif name == "adam":
    tx = optax.adam(schedule)
  else:
    raise ValueError(f"optimizer.name must be sgd|adam, got {name!r}")
  weight_decay = config.get("weight_decay", 0.0)
  if weight_decay:
    tx = optax.chain(optax.add_decayed_weights(weight_decay), tx)
  return tx


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0
                  ) -> jax.Array:
  """Mean softmax cross-entropy; logits (B, C), labels (B,) int."""
  targets = jax.nn.one_hot(labels, logits.shape[-1])
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  return optax.softmax_cross_entropy(logits, targets).mean()


def make_train_step(model: hk.TransformedWithState, tx: optax.GradientTransformation,
                    reparam: Reparam, label_smoothing: float = 0.0,
                    augment: Optional[Callable[[jax.Array, Batch], Batch]] = None,
                    ) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
  """A pure train step ``(state, batch) -> (state, metrics)``; batch = {"image", "label"}."""
  tx = optax.with_extra_args_support(tx)

  def step_fn(state: TrainState, batch: Batch):
    rng, aug_key, model_key = jax.random.split(state.rng, 3)
    if augment is not None:
      batch = augment(aug_key, batch)

    def loss_fn(w):
      logits, net_state = model.apply(w, state.net_state, model_key, batch["image"],
                                      is_training=True)
      loss = cross_entropy(logits, batch["label"], label_smoothing)
      return loss, (net_state, logits)

    w, to_v_grads = jax.vjp(
        lambda v: transform.effective_params(v, reparam.alpha, reparam.predicate), state.params)
    w = sparse_base.forward_params(w, state.opt_state)
    (loss, (net_state, logits)), g_w = jax.value_and_grad(loss_fn, has_aux=True)(w)
    (g_v,) = to_v_grads(g_w)  # straight through the mask: the optimizer masks by grad_masks
    updates, opt_state = tx.update(g_v, state.opt_state, state.params, dense_grads=g_w)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"])}
    return TrainState(state.step + 1, params, net_state, opt_state, rng), metrics

  return step_fn


def make_chunk_fn(step_fn, batch_fn: Callable[[PyTree, jax.Array], Batch],
                  unroll: int | bool = 1, batch_sharding: Optional[jax.sharding.Sharding] = None):
  """jit(scan(step_fn)) over a chunk: ``(state, data, idx[K, B]) -> (state, mean metrics)``.

  ``unroll=True`` unrolls the scan: XLA:CPU runs convolutions inside a loop body ~20x slower
  than outside one (jax-ml/jax#12868), so the conv-net configs unroll short chunks on CPU.
  ``batch_sharding`` (see ``parallel``) splits each gathered batch over devices; the state
  keeps the sharding it was given (replicated), so jit inserts the gradient all-reduce.
  """

  def chunk(state: TrainState, data: PyTree, idx: jax.Array):
    def body(s, i):
      batch = batch_fn(data, i)
      if batch_sharding is not None:
        batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
      return step_fn(s, batch)
    state, metrics = jax.lax.scan(body, state, idx, unroll=unroll)
    return state, jax.tree_util.tree_map(jnp.mean, metrics)

  return jax.jit(chunk, donate_argnums=(0,))


def gather_batch(data: Dataset, idx: jax.Array) -> Batch:
  return {"image": data.images[idx], "label": data.labels[idx]}


def batch_indices(seed: int, start_step: int, num_steps: int, batch_size: int, n: int
                  ) -> np.ndarray:
  """(num_steps, batch_size) example indices of steps [start_step, start_step + num_steps).

  The stream is shuffle-repeat-batch: epoch e is a permutation seeded by (seed, e), and
  batches run on across epoch boundaries. A pure function of its arguments.
  """
  positions = np.arange(start_step * batch_size, (start_step + num_steps) * batch_size,
                        dtype=np.int64)
  epochs, offsets = np.divmod(positions, n)
  out = np.empty_like(positions)
  for e in np.unique(epochs):
    perm = np.random.default_rng([seed, int(e)]).permutation(n)
    sel = epochs == e
    out[sel] = perm[offsets[sel]]
  return out.reshape(num_steps, batch_size).astype(np.int32)


def make_eval_fn(model: hk.TransformedWithState, reparam: Reparam, batch_size: int = 10000):
  """``accuracy(params, net_state, data, masks=None) -> float`` on the given Dataset.

  ``params`` are stored params; ``masks`` (optional) multiply the effective weights.
  """

  @jax.jit
  def correct(params, net_state, masks, images, labels):
    w = transform.effective_params(params, reparam.alpha, reparam.predicate)
    if masks is not None:
      w = masks_lib.apply_masks(w, masks)
    logits, _ = model.apply(w, net_state, None, images, is_training=False)
    return jnp.sum(jnp.argmax(logits, -1) == labels)

  def accuracy(params, net_state, data: Dataset, masks: Optional[PyTree] = None) -> float:
    total = 0
    for i in range(0, len(data.labels), batch_size):
      total += int(correct(params, net_state, masks, data.images[i:i + batch_size],
                           data.labels[i:i + batch_size]))
    return total / len(data.labels)

  return accuracy


class MetricsWriter:
  """Appends one JSON object per line to ``workdir/metrics.jsonl``."""

  def __init__(self, workdir: str):
    os.makedirs(workdir, exist_ok=True)
    self.path = os.path.join(workdir, "metrics.jsonl")

  def write(self, record: dict[str, Any]) -> None:
    with open(self.path, "a") as f:
      f.write(json.dumps({k: (float(v) if isinstance(v, (np.floating, jax.Array)) else v)
                          for k, v in record.items()}) + "\n")


class Experiment(NamedTuple):
  """Everything built from a config that a run needs."""
  model: hk.TransformedWithState
  tx: optax.GradientTransformation
  reparam: Reparam
  init_state: TrainState


def build_experiment(config: ml_collections.ConfigDict, sample_input: np.ndarray
                     ) -> Experiment:
  """Model, optimizer (with the sparsity method inside) and the initial state."""
  from powerprop_jax import models  # pylint: disable=g-import-not-at-top
  reparam = Reparam(transform.validate_alpha(config.alpha))
  model = models.model_from_config(config.model)
  rng = jax.random.PRNGKey(config.seed)
  init_key, rng = jax.random.split(rng)
  # Everything below runs jitted: op-by-op execution would compile hundreds of tiny programs
  # (a minute for a ResNet on CPU).
  params, net_state = jax.jit(lambda k, x: model.init(k, x, is_training=True))(
      init_key, sample_input)
  transform.check_no_zero_init(params, reparam.alpha, reparam.predicate)
  params = jax.jit(lambda p: transform.reparameterise_init(p, reparam.alpha, reparam.predicate)
                   )(params)
  steps = int(config.train.steps)
  tx = make_optimizer(config.optimizer, steps)
  sparse = config.sparsity.get("method", "none") != "none"
  method = registry.build_method(
      config.sparsity, params, steps, reparam.alpha,
      models.creation_order(config.model, sample_input) if sparse else ())
  if method is not None:
    tx = sparse_base.sparse_optimizer(tx, method)

  @jax.jit
  def init_state(params, net_state, rng):
    if method is not None:
      params = sparse_base.initial_params(params, method)
    state = TrainState(jnp.zeros([], jnp.int32), params, net_state, tx.init(params), rng)
    # Fresh buffers: the chunk function donates the state, and init may alias leaves
    # (e.g. masks and grad_masks are one array for most sparsity methods).
    return jax.tree_util.tree_map(jnp.copy, state)

  return Experiment(model, tx, reparam, init_state(params, net_state, rng))


def _log(msg: str) -> None:
  print(msg, flush=True)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       datasets: dict[str, Dataset],
                       log: Callable[[str], None] = _log) -> tuple[TrainState, Experiment]:
  """Trains ``config.train.steps`` steps, logging, evaluating and checkpointing as it goes.

  Restarts from the latest checkpoint in ``workdir`` if there is one. Returns the final state
  and the experiment (model, optimizer, reparam) that produced it.
  """
  train_cfg = config.train
  steps, batch, chunk = int(train_cfg.steps), int(train_cfg.batch_size), int(train_cfg.chunk_steps)
  if steps <= 0 or batch <= 0 or chunk <= 0:
    raise ValueError(f"train.steps, train.batch_size and train.chunk_steps must be > 0, got "
                     f"{steps}, {batch}, {chunk}")
  train = datasets["train"]
  exp = build_experiment(config, train.images[:1])
  state = exp.init_state
  ckpt = checkpoint_lib.Checkpointer(workdir)
  if ckpt.latest_step() is not None:
    state = ckpt.restore(state)
    log(f"resumed from step {int(state.step)} in {workdir}")
  writer = MetricsWriter(workdir)
  augment = augment_lib.get_augment(train_cfg.get("augment", "none"))
  mesh = parallel.make_mesh(int(train_cfg.get("num_devices", 1)))
  parallel.check_batch_size(batch, mesh)
  chunk_fn = make_chunk_fn(
      make_train_step(exp.model, exp.tx, exp.reparam, train_cfg.get("label_smoothing", 0.0),
                      augment),
      gather_batch, unroll=train_cfg.get("unroll", 1),
      batch_sharding=parallel.batch_sharding(mesh) if mesh.size > 1 else None)
  evaluate = make_eval_fn(exp.model, exp.reparam)
  state = parallel.replicate(state, mesh)
  device_train = parallel.replicate(Dataset(train.images, train.labels), mesh)
  start, t0 = int(state.step), time.time()
  while int(state.step) < steps:
    s = int(state.step)
    k = min(chunk, steps - s)
    idx = batch_indices(config.seed, s, k, batch, len(train.labels))
    state, metrics = chunk_fn(state, device_train, idx)
    s += k
    crossed = lambda n: bool(n) and s // n > (s - k) // n  # noqa: E731
    record = {"step": s, **{f"train_{n}": float(v) for n, v in metrics.items()}}
    if crossed(train_cfg.eval_every) or s == steps:
      record["validation_accuracy"] = evaluate(
          state.params, state.net_state, datasets["validation"],
          _forward_masks(state.opt_state))
    if s == steps and "test" in datasets:
      record["test_accuracy"] = evaluate(state.params, state.net_state, datasets["test"],
                                         _forward_masks(state.opt_state))
    sparse = sparse_base.find_sparse_state(state.opt_state)
    if sparse is not None:
      record["sparsity"] = masks_lib.sparsity_of(jax.device_get(sparse.masks),
                                                 exp.reparam.predicate)
    if crossed(train_cfg.log_every) or s == steps:
      rate = (s - start) / max(time.time() - t0, 1e-9)
      log(f"step {s}/{steps} ({100 * s / steps:.0f}%) " + " ".join(
          f"{n}={v:.4f}" for n, v in record.items() if n != "step") + f" [{rate:.0f} steps/s]")
    writer.write(record)
    if crossed(train_cfg.checkpoint_every) or s == steps:
      ckpt.save(s, state)
  ckpt.close()
  return state, exp


def _forward_masks(opt_state: optax.OptState) -> Optional[PyTree]:
  sparse = sparse_base.find_sparse_state(opt_state)
  return None if sparse is None else sparse.masks
