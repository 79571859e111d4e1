"""The one training driver: state construction, the step, a chunked driver, evaluation.

The stored params are ``v``; each step computes the effective weights
``w = masks * powerprop(v, alpha)`` (masks from the optimizer state, if any), the loss and its
gradient ``g_w`` w.r.t. ``w`` (dense: also at masked entries), and
``g_v = g_w * alpha |v|^(alpha-1)`` by the VJP of the power alone, i.e. straight through the
mask, as Top-KAST prescribes; the sparse optimizer then keeps only the entries its
``grad_masks`` allow. The optimizer gets ``g_v`` and, as ``dense_grads``, ``g_w`` (what RigL
grows by).

Steps run in chunks: one jitted ``lax.scan`` per chunk of ``chunk_steps`` steps. A
:class:`TrainInput` says what the scan runs over: for in-memory data sets (MNIST, CIFAR) the
data sit on the device and each chunk receives a (K, batch) array of example indices
computed on the host from (seed, step); for streamed data (ImageNet) each chunk receives K
global batches assembled from every host's local batches. Either way the batch of step s
is a pure function of (seed, s), so a resumed run sees exactly the batches an
uninterrupted one would, on any number of hosts.

Input, transfer and compute overlap: a background thread prepares the next chunks' inputs
on the devices (``parallel.prefetch``; streamed images travel as uint8 and are normalised on
the device) while the current chunk runs, and the host reads metrics back only at log, eval
and checkpoint boundaries. Each record in ``metrics.jsonl`` / TensorBoard holds the means over
the steps since the previous one and their timing: ``images_per_s`` and ``step_time_s``
(compilation, evaluation and checkpointing excluded) and ``input_wait_fraction`` (the share
of that wall time the loop waited for input: near 0 when compute bounds the run).
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Iterator, NamedTuple, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from powerprop_jax import checks
from powerprop_jax import masks as masks_lib
from powerprop_jax import optim, transform
from powerprop_jax.experiment import checkpoint as checkpoint_lib
from powerprop_jax.experiment import flops as flops_lib
from powerprop_jax.experiment import metrics as metrics_lib
from powerprop_jax.experiment import parallel
from powerprop_jax.experiment import preemption
from powerprop_jax.experiment import workdir as workdir_lib
from powerprop_jax.experiment.data import augment as augment_lib
from powerprop_jax.experiment.data import base as data_base
from powerprop_jax.sparsity import base as sparse_base
from powerprop_jax.sparsity import builders
from powerprop_jax.transform import Reparam

PyTree = Any
Batch = dict[str, jax.Array]
Log = Callable[[str], None]
StepFn = Callable[["TrainState", Batch], tuple["TrainState", dict[str, jax.Array]]]


# metrics.jsonl / TensorBoard key prefix of each sparse layer's density (fraction kept).
DENSITY_PREFIX = "density/"


class TrainState(NamedTuple):
  step: jax.Array          # () int32
  params: PyTree           # stored params (v where reparameterised)
  net_state: PyTree        # model state (batch-norm statistics)
  opt_state: optax.OptState
  rng: jax.Array           # raw uint32 PRNG key


class TrainingDiverged(checks.UserError):
  """The loss became NaN or infinite; the message is one line for the user."""


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0
                  ) -> jax.Array:
  """Mean softmax cross-entropy; logits (B, C), labels (B,) int."""
  targets = jax.nn.one_hot(labels, logits.shape[-1])
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets).mean()


def init_state(tx: optax.GradientTransformation, params: PyTree, net_state: PyTree,
               rng: jax.Array) -> TrainState:
  """The step-0 state: ``tx.init`` runs once (a sparsity method's init with it).

  ``params`` are the stored params (already ``reparameterise_init``-ed). Jitted; every leaf
  is a fresh buffer, since the chunk function donates the state.
  """

  @jax.jit
  def build(params, net_state, rng):
    state = TrainState(jnp.zeros([], jnp.int32), params, net_state, tx.init(params), rng)
    return jax.tree_util.tree_map(jnp.copy, state)

  return build(params, net_state, rng)


GradFn = Callable[[PyTree, PyTree, jax.Array, Batch],
                  tuple[PyTree, PyTree, dict[str, jax.Array]]]


def make_grad_fn(model: Any, label_smoothing: float = 0.0) -> GradFn:
  """``(w, net_state, key, batch) -> (g_w, net_state, metrics)``: the loss gradient w.r.t.
  the effective weights ``w`` on one batch, the model state after it, and {"loss",
  "accuracy"} () on it."""

  def grads(w, net_state, key, batch):
    def loss_fn(w):
      logits, new_state = model.apply(w, net_state, key, batch["image"], is_training=True)
      return cross_entropy(logits, batch["label"], label_smoothing), (new_state, logits)

    (loss, (new_state, logits)), g_w = jax.value_and_grad(loss_fn, has_aux=True)(w)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
    return g_w, new_state, {"loss": loss, "accuracy": accuracy}

  return grads


def split_microbatches(batch: Batch, k: int) -> Batch:
  """Each leaf (B, ...) -> (k, B/k, ...); microbatch i holds rows i, i + k, i + 2k, ...

  Strided, so each device's rows of a batch split over the devices (``P("data")``) give
  B/(k D) rows to every microbatch and the microbatches stay split over all devices.
  """
  def split(x):
    if x.shape[0] % k:
      raise ValueError(f"train.microbatches={k} must divide the batch of {x.shape[0]}")
    return jnp.swapaxes(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 0, 1)
  return jax.tree.map(split, batch)


def accumulate_grads(grads: GradFn, k: int) -> GradFn:
  """``grads`` over ``k`` sequential microbatches of the batch (``lax.scan``): the mean
  gradient and metrics, the model state threaded through them in order.

  Without batch norm this equals ``grads`` on the whole batch (to float rounding). With
  batch norm each microbatch is normalised by its own statistics (B/k examples) and the
  moving averages take k updates per step: a different run than k = 1.
  """
  if k == 1:
    return grads

  def accumulated(w, net_state, key, batch):
    def body(carry, xs):
      g_sum, m_sum, state = carry
      key_i, micro = xs
      g, state, m = grads(w, state, key_i, micro)
      add = lambda a, b: a + b  # noqa: E731
      return (jax.tree.map(add, g_sum, g), jax.tree.map(add, m_sum, m), state), None

    zeros = jax.tree.map(jnp.zeros_like, w)
    m0 = {"loss": jnp.zeros([], jnp.float32), "accuracy": jnp.zeros([], jnp.float32)}
    (g_sum, m_sum, net_state), _ = jax.lax.scan(
        body, (zeros, m0, net_state), (jax.random.split(key, k), split_microbatches(batch, k)))
    mean = lambda x: x / k  # noqa: E731
    return jax.tree.map(mean, g_sum), net_state, jax.tree.map(mean, m_sum)

  return accumulated


def make_train_step(model: Any, tx: optax.GradientTransformation, reparam: Reparam,
                    label_smoothing: float = 0.0,
                    augment: Optional[Callable[[jax.Array, Batch], Batch]] = None,
                    microbatches: int = 1) -> StepFn:
  """A pure train step ``(state, batch) -> (state, metrics)``; batch = {"image", "label"}.

  ``model`` is any object with ``apply(params, net_state, rng, x, is_training=...) ->
  (logits, net_state)`` (``hk.transform_with_state`` gives one). ``microbatches`` = k
  splits the batch into k sequential microbatches (:func:`accumulate_grads`): the mean of
  their gradients (``dense_grads`` too) makes one optimizer and one sparsity update.
  """
  tx = optax.with_extra_args_support(tx)
  grads = accumulate_grads(make_grad_fn(model, label_smoothing), microbatches)

  def step_fn(state: TrainState, batch: Batch):
    rng, aug_key, model_key = jax.random.split(state.rng, 3)
    if augment is not None:
      batch = augment(aug_key, batch)
    w, to_v_grads = jax.vjp(
        lambda v: transform.effective_params(v, reparam.alpha, reparam.predicate), state.params)
    w = sparse_base.forward_params(w, state.opt_state)
    g_w, net_state, metrics = grads(w, state.net_state, model_key, batch)
    (g_v,) = to_v_grads(g_w)  # straight through the mask: the optimizer masks by grad_masks
    updates, opt_state = tx.update(g_v, state.opt_state, state.params, dense_grads=g_w)
    params = optax.apply_updates(state.params, updates)
    return TrainState(state.step + 1, params, net_state, opt_state, rng), metrics

  return step_fn


def make_chunk_fn(step_fn: StepFn, batch_fn: Callable[[PyTree, Any], Batch],
                  unroll: int | bool = 1,
                  batch_sharding: Optional[jax.sharding.Sharding] = None):
  """jit(scan(step_fn)) over a chunk: ``(state, data, xs) -> (state, per-step metrics)``.

  ``xs`` has a leading axis of K steps (example indices (K, B), or K stacked batches);
  ``batch_fn(data, x)`` turns one step's slice into a batch. Metrics come back as (K,)
  arrays. ``unroll=True`` unrolls the scan: XLA:CPU runs convolutions inside a loop body
  ~20x slower than outside one (jax-ml/jax#12868), so the conv-net configs unroll short
  chunks on CPU. ``batch_sharding`` splits each batch over the mesh; the state keeps the
  sharding it was given (replicated), so jit inserts the gradient all-reduce.
  """

  def chunk(state: TrainState, data: PyTree, xs: Any):
    def body(s, x):
      batch = batch_fn(data, x)
      if batch_sharding is not None:
        batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
      return step_fn(s, batch)
    return jax.lax.scan(body, state, xs, unroll=unroll)

  return jax.jit(chunk, donate_argnums=(0,))


class TrainInput(NamedTuple):
  """What the chunked driver feeds the scan.

  ``data``: device-resident pytree handed to every chunk (None when streamed);
  ``batch_fn(data, x)``: one step's batch inside the scan;
  ``feed(step, k)``: the scan's ``xs`` for steps [step, step + k).
  """
  data: Any
  batch_fn: Callable[[Any, Any], Batch]
  feed: Callable[[int, int], Any]


def in_memory_input(dataset: data_base.Dataset, seed: int, batch_size: int,
                    mesh: jax.sharding.Mesh) -> TrainInput:
  """The data on every device, batches gathered inside the scan from host-computed indices
  (sent to the devices by the feed, so a prefetching driver overlaps the transfer)."""
  n = len(dataset.labels)
  return TrainInput(
      parallel.replicate(data_base.Dataset(*dataset), mesh), data_base.gather_batch,
      lambda step, k: parallel.replicate(
          data_base.batch_indices(seed, step, k, batch_size, n), mesh))


def stack_steps(local: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  """K local batches -> one (K, B/P, ...) batch (K = 1: a view, no copy)."""
  if len(local) == 1:
    return {key: value[None] for key, value in local[0].items()}
  return {key: np.stack([b[key] for b in local]) for key in local[0]}


def streamed_input(local_batches: Iterator[dict[str, np.ndarray]], mesh: jax.sharding.Mesh
                   ) -> TrainInput:
  """Batches from a host iterator of this process's local batches, one per step, in order.

  Each chunk stacks K local batches and assembles the global (K, B, ...) arrays over every
  device of every host (``parallel.global_batch``). uint8 images are normalised on the
  device, inside the step (``data_base.normalise_uint8``).
  """

  def feed(step: int, k: int):
    del step  # the iterator was started at the run's first step
    local = stack_steps([next(local_batches) for _ in range(k)])
    return parallel.global_batch(local, mesh, stacked_steps=True)

  return TrainInput(None, lambda _, batch: data_base.normalise_uint8(batch), feed)


def chunk_plan(start: int, until: int, chunk_steps: int) -> list[tuple[int, int]]:
  """(first step, number of steps) of each chunk from ``start`` to ``until``."""
  return [(s, min(chunk_steps, until - s)) for s in range(start, until, chunk_steps)]


class Chunk(NamedTuple):
  """One chunk's result: the state after it, its (k,) per-step metrics (device arrays, not
  fetched) and the seconds the driver waited for its input."""
  state: TrainState
  k: int
  metrics: dict[str, jax.Array]
  input_wait_s: float


def iterate_chunks(state: TrainState, chunk_fn: Callable, train_input: TrainInput, until: int,
                   chunk_steps: int, prefetch: int = 2) -> Iterator[Chunk]:
  """The chunked driver: runs ``state`` from its step to ``until`` in chunks of at most
  ``chunk_steps`` and yields each :class:`Chunk` as soon as it is dispatched.

  The feed runs ``prefetch`` chunks ahead in a background thread (``parallel.prefetch``), so
  input, host-to-device transfer and compute overlap. Nothing is read back to the host; at
  most ``prefetch`` chunks are queued on the devices (older ones are waited for).
  """
  plan = chunk_plan(int(state.step), until, chunk_steps)
  inputs = parallel.prefetch((train_input.feed(s, k) for s, k in plan), prefetch)
  in_flight: list[jax.Array] = []
  try:
    for (_, k), (xs, waited) in zip(plan, inputs):
      state, metrics = chunk_fn(state, train_input.data, xs)
      in_flight.append(metrics["loss"])
      if len(in_flight) > prefetch:
        jax.block_until_ready(in_flight.pop(0))
      yield Chunk(state, k, metrics, waited)
  finally:
    inputs.close()


def run_steps(state: TrainState, chunk_fn: Callable, train_input: TrainInput, until: int,
              chunk_steps: int,
              on_chunk: Optional[Callable[[TrainState, int, dict[str, np.ndarray]], None]] = None
              ) -> TrainState:
  """:func:`iterate_chunks` to ``until``, calling ``on_chunk(state, k, metrics)`` after each
  chunk with its per-step metrics as (k,) host arrays (one host round trip per chunk)."""
  for chunk in iterate_chunks(state, chunk_fn, train_input, until, chunk_steps):
    state = chunk.state
    if on_chunk is not None:
      on_chunk(state, chunk.k, jax.device_get(chunk.metrics))
  return state


def make_eval_fn(model: Any, reparam: Reparam, batch_size: int = 10_000,
                 mesh: Optional[jax.sharding.Mesh] = None):
  """``accuracy(params, net_state, data, masks=None) -> float``.

  ``data`` is an in-memory :class:`~powerprop_jax.experiment.data.base.Dataset`, a callable
  ``data(global_batch)`` returning an iterable of this process's local batches {"image",
  "label", "mask"} (a streamed split), or such an iterable. Global batches hold
  ``batch_size`` examples padded up to a multiple of the mesh's device count
  (:func:`parallel.padded_batch`), so any batch size runs on any slice; padding is masked
  out, so the accuracy is exact over the whole split. ``params`` are stored params;
  ``masks`` (optional) multiply the effective weights. Batches are read and put on the
  devices ahead (``parallel.prefetch``); the counts are read back once, at the end.
  """
  mesh = parallel.make_mesh() if mesh is None else mesh

  @jax.jit
  def correct(params, net_state, masks, batch):
    batch = data_base.normalise_uint8(batch)
    w = transform.effective_params(params, reparam.alpha, reparam.predicate)
    if masks is not None:
      w = masks_lib.apply_masks(w, masks)
    logits, _ = model.apply(w, net_state, None, batch["image"], is_training=False)
    hits = (jnp.argmax(logits, -1) == batch["label"]) & batch["mask"]
    return jnp.sum(hits), jnp.sum(batch["mask"])

  def accuracy(params, net_state, data, masks: Optional[PyTree] = None) -> float:
    if isinstance(data, data_base.Dataset):
      size = parallel.padded_batch(min(batch_size, len(data.labels)), mesh.size)
      data = data_base.padded_batches(data, size, jax.process_index(), jax.process_count())
    elif callable(data):
      data = data(parallel.padded_batch(batch_size, mesh.size))
    counts = []
    for batch, _ in parallel.prefetch(parallel.global_batch(local, mesh) for local in data):
      counts.append(correct(params, net_state, masks, batch))
      if len(counts) > 2:   # at most 2 batches queued on the devices
        jax.block_until_ready(counts[-3])
    hits, total = (sum(int(c[i]) for c in jax.device_get(counts)) for i in (0, 1))
    if total == 0:
      raise ValueError("evaluation split is empty")
    return hits / total

  return accuracy


class Experiment(NamedTuple):
  """Everything built from a config that a run needs."""
  model: Any                      # .init / .apply of hk.transform_with_state
  tx: optax.GradientTransformation
  reparam: Reparam
  init_state: TrainState
  layer_order: tuple[str, ...]    # prunable modules in creation order ("first"/"last")
  learning_rate: optax.Schedule


def build_experiment(config: ml_collections.ConfigDict, sample_input: np.ndarray
                     ) -> Experiment:
  """Model, optimizer (with the sparsity method inside) and the initial state."""
  from powerprop_jax.experiment import models  # pylint: disable=g-import-not-at-top (Haiku)
  reparam = Reparam(transform.validate_alpha(config.alpha))
  model = models.model_from_config(config.model)
  init_key, rng = jax.random.split(jax.random.PRNGKey(config.seed))
  # Everything below runs jitted: op-by-op execution would compile hundreds of tiny programs
  # (a minute for a ResNet on CPU).
  params, net_state = jax.jit(lambda k, x: model.init(k, x, is_training=True))(
      init_key, sample_input)
  transform.check_no_zero_init(params, reparam.alpha, reparam.predicate)
  params = jax.jit(lambda p: transform.reparameterise_init(p, reparam.alpha, reparam.predicate)
                   )(params)
  steps = int(config.train.steps)
  order = (tuple(models.creation_order(config.model, sample_input))
           if config.sparsity.method != "none" else ())
  tx = optim.make_optimizer(config.optimizer, steps,
                            builders.weight_decay_mask(config.sparsity, params, order))
  method = builders.build_method(config.sparsity, params, steps, reparam.alpha, order)
  if method is not None:
    tx = sparse_base.sparse_optimizer(tx, method)
  state = init_state(tx, params, net_state, rng)
  return Experiment(model, tx, reparam, state, order,
                    optim.learning_rate_schedule(config.optimizer, steps))


def forward_masks(opt_state: optax.OptState) -> Optional[PyTree]:
  """The forward masks held in ``opt_state`` (None for dense training)."""
  sparse = sparse_base.find_sparse_state(opt_state)
  return None if sparse is None else sparse.masks


def _log(msg: str) -> None:
  print(msg, flush=True)


def check_finite_loss(metrics: dict[str, np.ndarray], step: int, k: int,
                      learning_rate: float) -> None:
  """Raises :class:`TrainingDiverged` naming the first step of the chunk ending at ``step``
  (``k`` steps long; ``metrics["loss"]`` has shape [k]) whose loss is not finite."""
  losses = np.asarray(metrics["loss"])
  if not np.all(np.isfinite(losses)):
    bad = int(np.argmin(np.isfinite(losses)))
    raise TrainingDiverged(
        f"loss became {losses[bad]} at step {step - k + 1 + bad}; stopped; lower "
        f"optimizer.learning_rate ({learning_rate:g}) or check the data")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       datasets: dict[str, data_base.Dataset] | data_base.DataSplits,
                       log: Log = _log, allow_changed_config: bool = False,
                       allow_extend: bool = False) -> tuple[TrainState, Experiment]:
  """Trains ``config.train.steps`` steps, logging, evaluating and checkpointing as it goes.

  Restarts from the newest intact checkpoint in ``workdir`` if there is one (refusing a
  workdir whose run was defined by another config unless ``allow_changed_config``, or with
  fewer steps; more steps only with ``allow_extend``, to extend a finished run). Stops
  at the first non-finite loss (:class:`TrainingDiverged`), keeping the last good
  checkpoint. A SIGTERM (or JAX's preemption notice) saves a checkpoint and raises
  :class:`preemption.Preempted`. Returns the final state and the experiment that produced it.
  """
  splits = (datasets if isinstance(datasets, data_base.DataSplits)
            else data_base.DataSplits.from_datasets(datasets))
  train_cfg = config.train
  steps, batch, chunk = int(train_cfg.steps), int(train_cfg.batch_size), int(train_cfg.chunk_steps)
  if steps <= 0 or batch <= 0 or chunk <= 0:
    raise ValueError(f"train.steps, train.batch_size and train.chunk_steps must be > 0, got "
                     f"{steps}, {batch}, {chunk}")
  is_writer = jax.process_index() == 0
  log = log if is_writer else (lambda msg: None)
  mesh = parallel.make_mesh(int(train_cfg.num_devices))
  check_batch_split(batch, mesh.size, int(train_cfg.microbatches))
  # The run's record: its config and a fingerprint of its data (another data.dir with other
  # content is another run, though data.dir itself is not).
  record = {**config.to_dict(), "data": {**config.data.to_dict(),
                                         "fingerprint": splits.fingerprint()}}
  with workdir_lib.WorkdirLock(workdir, is_writer=is_writer):
    workdir_lib.check_same_run(workdir, record, allow_extend=allow_extend,
                               override=allow_changed_config, log=log)
    use_compilation_cache(str(train_cfg.compilation_cache))
    exp = build_experiment(config, splits.sample_input)
    ckpt = checkpoint_lib.Checkpointer(workdir)
    # The target is the state as the loop holds it (replicated over every host's devices),
    # so each host restores its own copy in place: no array crosses hosts.
    init_state = parallel.replicate(exp.init_state, mesh)
    state, restored = ckpt.restore_latest_intact(init_state, log)
    if state is None:
      state = init_state
    else:
      log(f"resumed from step {restored} in {workdir}")
    workdir_lib.record_run(workdir, record, is_writer=is_writer)
    try:
      state = _train(config, workdir, splits, exp, state, mesh, ckpt, log, is_writer)
    finally:   # a save in flight is finished even when training stops on an error
      ckpt.close()
  return state, exp


def use_compilation_cache(directory: str) -> None:
  """JAX's persistent compilation cache in ``directory`` ("": leave the setting alone): a
  rerun (a resume after preemption) loads the compiled steps instead of compiling again."""
  if directory:
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(directory))


def _train_input(config, splits: data_base.DataSplits, start: int, mesh) -> TrainInput:
  batch = int(config.train.batch_size)
  if splits.stream_train is not None:
    return streamed_input(splits.stream_train(start), mesh)
  if jax.process_count() > 1:
    return streamed_input(data_base.local_batches(
        splits.train, config.seed, start, batch, jax.process_index(), jax.process_count()), mesh)
  return in_memory_input(splits.train, config.seed, batch, mesh)


class Window:
  """What the driver gathers between two host reads (a log, eval or checkpoint boundary):
  the chunks' device metrics, and the wall time, steps and input waits to time it by. The
  first chunk of a run (the compilation) is left out of the timing."""

  def __init__(self) -> None:
    self.metrics: list[dict[str, jax.Array]] = []
    self.steps = self.timed_steps = 0
    self.input_wait_s = 0.0
    self.t0: Optional[float] = None

  def add(self, chunk: Chunk) -> None:
    self.metrics.append(chunk.metrics)
    self.steps += chunk.k
    if self.t0 is None:   # the run's first chunk: wait for it, then start the clock
      jax.block_until_ready(chunk.metrics)
      self.t0 = time.perf_counter()
    else:
      self.timed_steps += chunk.k
      self.input_wait_s += chunk.input_wait_s

  def fetch(self) -> dict[str, np.ndarray]:
    """The window's per-step metrics on the host, (steps,) each (the one host round trip)."""
    host = jax.device_get(self.metrics)
    return {key: np.concatenate([np.asarray(m[key]).reshape(-1) for m in host])
            for key in host[0]}

  def timing(self, batch_size: int, step_flops: float = 0.0, peak_flops: float = 0.0
             ) -> dict[str, float]:
    """images_per_s, step_time_s and input_wait_fraction of the timed steps (none: {});
    with ``step_flops`` (model FLOPs per step) and ``peak_flops`` (FLOP/s of all devices)
    also model_tflops_per_s and device_utilisation (their ratio, the MFU)."""
    elapsed = time.perf_counter() - self.t0
    if not self.timed_steps or elapsed <= 0:
      return {}
    out = {"images_per_s": self.timed_steps * batch_size / elapsed,
           "step_time_s": elapsed / self.timed_steps,
           "input_wait_fraction": min(1.0, self.input_wait_s / elapsed)}
    if step_flops and peak_flops:
      flops_per_s = step_flops * self.timed_steps / elapsed
      out.update(model_tflops_per_s=flops_per_s / 1e12,
                 device_utilisation=flops_per_s / peak_flops)
    return out

  def restart(self) -> None:
    """A new window whose clock starts now (after the boundary's eval and checkpoint)."""
    t0 = self.t0
    self.__init__()
    self.t0 = time.perf_counter() if t0 is not None else None


def model_flops(model: Any, state: TrainState, batch_size: int, sample_input: np.ndarray
                ) -> float:
  """Model FLOPs of one step: the loss's forward and backward pass on the global batch, as
  XLA's cost analysis counts them (lowered, not compiled), with every weight counted (the
  dense-equivalent model, whatever the masks; MFU counts the model's work, not the optimizer's
  or the mask updates', which a ``lax.cond`` would count on every step). Microbatches do not
  change it: the same examples take the same FLOPs."""
  batch = {"image": jax.ShapeDtypeStruct((batch_size, *sample_input.shape[1:]), jnp.float32),
           "label": jax.ShapeDtypeStruct((batch_size,), jnp.int32)}
  return flops_lib.step_flops(make_grad_fn(model), state.params, state.net_state,
                              jax.random.PRNGKey(0), batch)


def utilisation_basis(config: ml_collections.ConfigDict, exp: Experiment, state: TrainState,
                      sample_input: np.ndarray, mesh: jax.sharding.Mesh) -> tuple[float, float]:
  """(:func:`model_flops` of a step, peak FLOP/s of the mesh's devices), or (0, 0) when no
  peak is known (``train.peak_tflops`` = 0 on a CPU or an unlisted chip)."""
  peak = float(config.train.peak_tflops) or flops_lib.peak_tflops(
      mesh.devices.flat[0].device_kind)
  if not peak:
    return 0.0, 0.0
  return (model_flops(exp.model, state, int(config.train.batch_size), sample_input),
          peak * 1e12 * mesh.size)


def _train(config, workdir, splits: data_base.DataSplits, exp: Experiment, state: TrainState,
           mesh, ckpt, log: Log, is_writer: bool) -> TrainState:
  """The loop, from ``state`` (replicated over ``mesh``): chunks are dispatched back to back;
  the host reads metrics (and masks' sparsity) only at log, eval and checkpoint boundaries,
  where the non-finite-loss check runs over every step since the last one (so it may lag,
  but names the first bad step and never saves a checkpoint after it)."""
  train_cfg = config.train
  steps, batch = int(train_cfg.steps), int(train_cfg.batch_size)
  start = int(state.step)
  train_input = _train_input(config, splits, start, mesh)
  chunk_fn = make_chunk_fn(
      make_train_step(exp.model, exp.tx, exp.reparam, float(train_cfg.label_smoothing),
                      augment_lib.get_augment(train_cfg.augment), int(train_cfg.microbatches)),
      train_input.batch_fn, unroll=bool(train_cfg.unroll) or 1,
      batch_sharding=parallel.batch_sharding(mesh) if mesh.size > 1 else None)
  evaluate = make_eval_fn(exp.model, exp.reparam, int(train_cfg.eval_batch_size), mesh)
  writer = metrics_lib.MetricsWriter(workdir, is_writer=is_writer, start_step=start)
  step_flops, peak_flops = utilisation_basis(config, exp, state, splits.sample_input, mesh)
  t0, last_good = time.time(), ckpt.latest_step()
  window = Window()

  def crossed(n: int, s: int, k: int) -> bool:
    return bool(n) and s // n > (s - k) // n

  def on_boundary(state: TrainState, s: int, metrics: dict[str, np.ndarray],
                  save: bool, evaluate_now: bool, stop: bool = False) -> None:
    nonlocal last_good
    try:
      check_finite_loss(metrics, s, len(metrics["loss"]), float(config.optimizer.learning_rate))
    except TrainingDiverged as e:
      where = f"last good checkpoint: step {last_good}" if last_good else "no checkpoint yet"
      raise TrainingDiverged(f"{e} ({where} in {workdir})") from None
    record = {"step": s, **{f"train_{n}": float(np.mean(v)) for n, v in metrics.items()},
              "learning_rate": float(exp.learning_rate(s - 1)),
              **window.timing(batch, step_flops, peak_flops)}
    masks = forward_masks(state.opt_state)
    if evaluate_now and splits.validation is not None:
      record["validation_accuracy"] = evaluate(state.params, state.net_state, splits.validation,
                                               masks)
    if s == steps and splits.test is not None:
      record["test_accuracy"] = evaluate(state.params, state.net_state, splits.test, masks)
    if masks is not None:
      host_masks = jax.device_get(masks)
      record["sparsity"] = masks_lib.sparsity_of(host_masks, exp.reparam.predicate)
      record.update({f"{DENSITY_PREFIX}{layer}": d for layer, d in
                     masks_lib.layer_densities(host_masks, exp.reparam.predicate).items()})
    if crossed(train_cfg.log_every, s, window.steps) or s == steps:
      shown = {k: v for k, v in record.items() if not k.startswith(DENSITY_PREFIX)}
      log(metrics_lib.format_progress(s, steps, shown, record.get("images_per_s", 0.0),
                                      time.time() - t0, start_step=start))
    if save:   # before the record: a run whose last record is written is on disk whole
      ckpt.save(s, state, wait=s == steps or stop)
      last_good = s
    writer.write(record)

  s, preempted = start, None
  profile = Profile(parse_profile(train_cfg.profile), os.path.join(workdir, "profile"))
  chunks = iterate_chunks(state, chunk_fn, train_input, steps, int(train_cfg.chunk_steps))
  try:
    with preemption.PreemptionWatch() as watch:
      for i, chunk in enumerate(chunks):
        state, s = chunk.state, s + chunk.k
        window.add(chunk)
        profile.update(s, state)
        stop = watch.reached(i)
        due = {n: crossed(int(train_cfg[f"{n}_every"]), s, window.steps) or s == steps
               for n in ("log", "eval", "checkpoint")}
        if any(due.values()) or stop:
          on_boundary(state, s, window.fetch(), save=due["checkpoint"] or stop,
                      evaluate_now=due["eval"], stop=stop)
          window.restart()
        if stop:
          preempted = preemption.Preempted(s, steps, workdir, state)
          log(str(preempted))
          break
  finally:
    chunks.close()
    profile.stop(state)
    writer.close()
  if preempted is not None:
    raise preempted
  return state


def parse_profile(spec: str) -> Optional[tuple[int, int]]:
  """``train.profile`` "START:STOP" -> (START, STOP) with 0 <= START < STOP; "" -> None."""
  if not spec:
    return None
  try:
    first, last = (int(x) for x in str(spec).split(":"))
  except ValueError:
    first = last = -1
  if not 0 <= first < last:
    raise checks.ConfigError(f"train.profile must be '' or 'START:STOP' with 0 <= START < STOP "
                             f"(steps), got {spec!r}")
  return first, last


class Profile:
  """A ``jax.profiler`` trace of steps (START, STOP] (widened to whole chunks) in ``logdir``:
  started once a chunk ends at step >= START, stopped once one ends at step >= STOP."""

  def __init__(self, window: Optional[tuple[int, int]], logdir: str):
    self.window, self.logdir, self.running = window, logdir, False

  def update(self, step: int, state: TrainState) -> None:
    """Called after each chunk is dispatched, with the step it ends at."""
    if self.window is None:
      return
    first, last = self.window
    if self.running and step >= last:
      self.stop(state)
      self.window = None
    elif not self.running and first <= step < last:
      jax.profiler.start_trace(self.logdir)
      self.running = True

  def stop(self, state: TrainState) -> None:
    if self.running:
      jax.block_until_ready(state)
      jax.profiler.stop_trace()
      self.running = False


def check_config(config: ml_collections.ConfigDict, num_train: Optional[int] = None,
                 num_devices: Optional[int] = None) -> None:
  """Checks every field a training run reads, before any data is loaded or step is taken: the
  run's own (alpha, seed, ``train``) here, and each piece's by the code that builds it
  (``data``, ``model``, ``optimizer``, ``sparsity``). ``num_train`` (once the data are
  loaded) also bounds the batch size; each of ``train.microbatches`` parts of it must split
  over ``num_devices`` (the mesh size; :func:`check_batch_split`). Raises
  :class:`~powerprop_jax.checks.ConfigError`."""
  from powerprop_jax.experiment import data, models  # pylint: disable=g-import-not-at-top
  try:
    transform.validate_alpha(config.alpha)
  except ValueError as e:
    raise checks.ConfigError(f"alpha: {e}") from None
  checks.integer(config.seed, "seed")
  data.check_config(config.data)
  models.check_config(config.model)
  t = config.train
  steps = checks.integer(t.steps, "train.steps", 1)
  batch = checks.integer(t.batch_size, "train.batch_size", 1)
  microbatches = checks.integer(t.microbatches, "train.microbatches", 1)
  for field in ("chunk_steps", "eval_batch_size"):
    checks.integer(t[field], f"train.{field}", 1)
  for field in ("num_devices", "log_every", "eval_every", "checkpoint_every"):
    checks.integer(t[field], f"train.{field}")
  parse_profile(t.profile)
  checks.choice(t.augment, "train.augment", sorted(augment_lib.AUGMENTATIONS))
  checks.fraction(t.label_smoothing, "train.label_smoothing")
  checks.positive(t.peak_tflops, "train.peak_tflops", allow_zero=True)
  check_batch_split(batch, num_devices or 1, microbatches)
  if num_train is not None and batch > num_train:
    raise checks.ConfigError(f"train.batch_size={batch} exceeds the {num_train} training "
                             f"examples of {config.data.name}; lower train.batch_size")
  optim.check_config(config.optimizer, steps)
  builders.check_config(config.sparsity, steps)
  if config.sparsity.method != "none":   # dense_layers, per-layer counts: from shapes alone
    params, order = models.param_shapes(config.model, data.sample_input(config.data).shape)
    builders.check_layers(config.sparsity, params, order)


def check_batch_split(batch_size: int, num_devices: int, microbatches: int = 1) -> None:
  """ConfigError unless the global ``train.batch_size`` splits into ``microbatches`` equal
  parts that each split evenly over the ``num_devices`` devices of the mesh. (Evaluation
  batches are padded instead: any size runs.)"""
  unit = num_devices * microbatches
  if batch_size % unit:
    raise checks.ConfigError(
        f"train.batch_size={batch_size} must be a multiple of {unit} = {num_devices} devices "
        f"(of all hosts) x train.microbatches={microbatches}; e.g. "
        f"{parallel.padded_batch(batch_size, unit)}")


def run_experiment(config: ml_collections.ConfigDict, workdir: str, log: Log = _log,
                   allow_changed_config: bool = False, allow_extend: bool = False
                   ) -> dict[str, Any]:
  """What ``scripts/train.py`` runs: validate the config, join the other hosts if asked,
  load (or stream) the data, train and evaluate. Returns the final metrics record."""
  from powerprop_jax.experiment.data import inputs  # pylint: disable=g-import-not-at-top
  parallel.maybe_initialize(bool(config.train.distributed))
  splits = inputs.load_validated(config)
  train_and_evaluate(config, workdir, splits, log=log,
                     allow_changed_config=allow_changed_config, allow_extend=allow_extend)
  if jax.process_index() != 0:
    return {}
  records = metrics_lib.read_metrics(os.path.join(workdir, "metrics.jsonl"))
  return records[-1] if records else {}
