"""A finished run as something to take away: its model, its pruned weights and its config.

    run = load_run("runs/mnist_rigl")            # any workdir scripts/train.py (or a sweep) made
    logits = run.apply(run.params, images)       # w = masks * powerprop(v): no alpha needed
    export.save_sparse("model.ppjx", run.params, metadata={"config": run.config.to_dict()})

``params`` are the effective weights with Powerpropagation and the run's masks baked in, so
they need neither alpha nor this library's training code: ``apply(params, x)`` is the plain
model (Haiku's ``apply`` with the batch-norm statistics bound, ``is_training=False``).
Which masks: the sparsity method's forward masks held in the optimizer state (oneshot,
gradual, topkast, rigl, set); for a dense run nothing, or the one-shot pruning curve's masks
at ``keep_fraction`` (the protocol of ``scripts/prune_eval.py``); for a continual stream the
weights a task ``task`` uses at test time.
"""

from __future__ import annotations

import json
from typing import Any, Callable, NamedTuple, Optional

import jax
import ml_collections
import numpy as np

from powerprop_jax import curves, masks as masks_lib, transform
from powerprop_jax.continual import assignment
from powerprop_jax.experiment import checkpoint as checkpoint_lib
from powerprop_jax.experiment import config as config_lib
from powerprop_jax.experiment import data, models, train
from powerprop_jax.experiment import workdir as workdir_lib

PyTree = Any


class LoadedRun(NamedTuple):
  apply: Callable[[PyTree, Any], jax.Array]   # (params, images (B, ...)) -> logits (B, C)
  params: PyTree          # effective weights: masks * powerprop(v, alpha)
  net_state: PyTree       # batch-norm statistics (bound into ``apply``)
  masks: Optional[PyTree]  # the masks applied (None: dense)
  config: ml_collections.ConfigDict
  step: int               # the checkpoint step restored


def run_config(workdir: str) -> ml_collections.ConfigDict:
  """The run's config rebuilt from its record: the base config with every recorded field set
  (fields that do not define a run, such as data.dir, keep their defaults)."""
  fields = workdir_lib.recorded_fields(workdir)
  if fields is None:
    raise workdir_lib.WorkdirError(f"{workdir} records no run ({workdir_lib.RUN_CONFIG_FILE} "
                                   "missing): nothing to load")
  config = config_lib.base()
  with config.unlocked():
    for dotted, value in fields.items():
      *parents, leaf = dotted.split(".")
      node = config
      for part in parents:
        node = node[part]
      with node.ignore_type():
        node[leaf] = tuple(value) if isinstance(value, list) else value
  return config


def load_run(workdir: str, keep_fraction: Optional[float] = None,
             task: Optional[int] = None) -> LoadedRun:
  """Loads the newest intact checkpoint of the run in ``workdir`` (module docstring).

  ``keep_fraction`` (dense runs): prune one-shot as the pruning curves do (``prune`` fields
  of the run's config). ``task`` (continual streams): the weights task ``task`` uses.
  """
  config = run_config(workdir)
  sample = data.sample_input(config.data)
  if task is not None:
    return _load_continual(workdir, config, sample, int(task))
  exp = train.build_experiment(config, sample)
  state, step = checkpoint_lib.Checkpointer(workdir).restore_latest_intact(exp.init_state)
  if state is None:
    raise checkpoint_lib.CheckpointError(f"{workdir} holds no checkpoint to load")
  masks = train.forward_masks(state.opt_state)
  weights = transform.effective_params(state.params, exp.reparam.alpha, exp.reparam.predicate)
  if keep_fraction is not None:
    if masks is not None:
      raise ValueError(f"keep_fraction is for dense runs; {workdir} trained with "
                       f"sparsity.method={config.sparsity.method} and its own masks")
    masks = curves.curve_masks(weights, float(keep_fraction), config.prune.scope,
                               float(config.prune.output_layer_multiplier),
                               exp.reparam.predicate, exp.layer_order or tuple(
                                   models.creation_order(config.model, sample)))
  return _loaded(exp.model, weights, state.net_state, masks, config, step)


def _load_continual(workdir: str, config, sample, task: int) -> LoadedRun:
  reparam = transform.Reparam(transform.validate_alpha(config.alpha))
  model = models.model_from_config(config.model)
  params, net_state = model.init(jax.random.PRNGKey(0), sample, is_training=True)
  n = int(config.continual.num_tasks)
  rec = {k: np.zeros((n,)) for k in ("keep", "dense_val", "pruned_val")}
  target = {"params": params, "net_state": net_state, "owners": assignment.init_owners(params),
            "acc": np.zeros((n, n)), **rec}
  got, step = checkpoint_lib.Checkpointer(workdir).restore_latest_intact(
      target, allow_nonfinite=("acc", *rec))
  if got is None:
    raise checkpoint_lib.CheckpointError(f"{workdir} holds no checkpoint to load")
  owners = jax.tree_util.tree_map(lambda o: np.asarray(o, np.int32), got["owners"])
  masks = assignment.eval_mask(owners, task, int(step), reparam.predicate)
  weights = transform.effective_params(got["params"], reparam.alpha, reparam.predicate)
  return _loaded(model, weights, got["net_state"], masks, config, step)


def _loaded(model, weights, net_state, masks, config, step) -> LoadedRun:
  if masks is not None:
    weights = masks_lib.apply_masks(weights, jax.device_get(masks))
  weights = jax.tree_util.tree_map(np.asarray, jax.device_get(weights))
  net_state = jax.tree_util.tree_map(np.asarray, jax.device_get(net_state))

  @jax.jit
  def apply(params: PyTree, x: jax.Array) -> jax.Array:
    return model.apply(params, net_state, None, x, is_training=False)[0]

  return LoadedRun(apply, weights, net_state,
                   None if masks is None else jax.device_get(masks), config, int(step))


def layer_sparsity(params: PyTree, predicate: transform.ParamPredicate = transform.weights_only
                   ) -> dict[str, float]:
  """{layer: fraction of its weights that are zero} for the selected layers."""
  return {f"{module}/{name}": float(np.mean(np.asarray(x) == 0))
          for module, name, x in transform.selected_leaves(params, predicate)}


def config_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config as plain JSON (tuples as lists) for a file's metadata."""
  return json.loads(json.dumps(config.to_dict(), default=str))


__all__ = ["LoadedRun", "config_json", "layer_sparsity", "load_run", "run_config"]
