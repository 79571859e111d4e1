"""Train-step time of the MNIST MLP (LeNet-300-100, batch 60, SGD): powerprop forms, fixed
masks, RigL and Top-KAST (mask updates every 100 steps, amortised) as ratios to the plain dense
step measured in the same run.

  python scripts/bench_step.py [--steps 500] [--rounds 7] [--batch 60]
                               [--sweep --data_dir ../shared/data/mnist]

Every variant runs the library's own train step and chunk driver (``train.make_train_step``,
``train.make_chunk_fn``: one jitted ``lax.scan`` of ``--steps`` steps); variants are interleaved round by round and the median per-step time is reported.
``--sweep`` also times the full official 5-alpha sweep (50,000 steps each) end to end.
"""

import argparse
import json
import os
import time

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import ml_collections
import optax

import powerprop_jax as pp
from powerprop_jax.experiment import config as config_lib
from powerprop_jax.experiment import train

ALPHA = 4.0
BATCH = 60


def _mlp(x):
  return hk.nets.MLP([300, 100, 10])(x)


def _pp_mlp(x):
  with pp.haiku.powerprop(ALPHA):
    return _mlp(x)


def _library_loop(apply, params, tx, reparam):
  """The library's own jitted chunk (``train.make_train_step`` + ``train.make_chunk_fn``)
  over a (steps, batch) stream: returns run(state, x, y) and the initial state.

  ``apply(params, x)`` is a plain (stateless) model; powerprop is in the model (Haiku form,
  ``reparam.alpha`` 1), in the optimizer (optax form) or in the loop (``reparam.alpha``).
  """
  model = _Stateless(apply)
  chunk = train.make_chunk_fn(train.make_train_step(model, tx, reparam),
                              lambda _, xy: {"image": xy[0], "label": xy[1]})
  state = train.init_state(tx, params, {}, jax.random.PRNGKey(1))
  return (lambda s, x, y: chunk(s, None, (x, y))[0]), state


class _Stateless:
  """``apply(params, net_state, rng, x, is_training)`` around a stateless ``apply(params, x)``."""

  def __init__(self, apply):
    self._apply = apply

  def apply(self, params, net_state, rng, x, is_training=True):
    del rng, is_training
    return self._apply(params, x), net_state


def _sparse_config(method: str) -> ml_collections.ConfigDict:
  c = config_lib.base().sparsity
  c.update({"method": method, "level": 0.9, "distribution": "erk", "update_every": 100})
  return c


def variants():
  x0 = jnp.zeros((1, 784))
  plain = hk.without_apply_rng(hk.transform(_mlp))
  haiku_form = hk.without_apply_rng(hk.transform(_pp_mlp))
  w = plain.init(jax.random.PRNGKey(0), x0)
  v = haiku_form.init(jax.random.PRNGKey(0), x0)
  masks = pp.magnitude_masks(w, 0.9)
  sgd = optax.sgd(0.1)
  dense, in_model = pp.Reparam(1.0), pp.Reparam(ALPHA)
  out = {
      "dense": _library_loop(plain.apply, w, sgd, dense),
      "powerprop_haiku": _library_loop(haiku_form.apply, v, sgd, dense),
      "powerprop_optax": _library_loop(plain.apply, w, pp.powerprop_optimizer(sgd, ALPHA), dense),
      "powerprop_haiku+masks90": _library_loop(haiku_form.apply, v,
                                               pp.masked_optimizer(sgd, masks), dense),
      "powerprop_optax+masks90": _library_loop(
          plain.apply, w, pp.masked_optimizer(pp.powerprop_optimizer(sgd, ALPHA), masks), dense),
      "powerprop_train_loop": _library_loop(plain.apply, pp.reparameterise_init(w, ALPHA), sgd,
                                            in_model),
  }
  # Sparse methods in the same loop, mask updates every 100 steps (amortised in the chunk).
  v_loop = pp.reparameterise_init(w, ALPHA)
  for method in ("rigl", "topkast"):
    tx = pp.sparse_optimizer(sgd, pp.sparsity.build_method(_sparse_config(method), v_loop,
                                                            10**9, ALPHA))
    out[f"powerprop_loop+{method}90"] = _library_loop(plain.apply, v_loop, tx, in_model)
  return out


def bench(steps: int, rounds: int, batch: int = BATCH) -> dict[str, float]:
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.random((steps, batch, 784), np.float32))
  y = jnp.asarray(rng.integers(0, 10, (steps, batch)), jnp.int32)
  runs = variants()
  carries = {}
  for name, (run, carry) in runs.items():
    carries[name] = jax.block_until_ready(run(carry, x, y))  # compile + warm up
  times = {name: [] for name in runs}
  for _ in range(rounds):
    for name, (run, _) in runs.items():
      t0 = time.perf_counter()
      carries[name] = jax.block_until_ready(run(carries[name], x, y))
      times[name].append((time.perf_counter() - t0) / steps)
  return {name: float(np.median(t)) for name, t in times.items()}


def time_sweep(data_dir: str) -> float:
  import tempfile  # pylint: disable=g-import-not-at-top
  from powerprop_jax.experiment import data  # pylint: disable=g-import-not-at-top
  datasets = data.load_mnist("idx", data_dir)
  t0 = time.perf_counter()
  with tempfile.TemporaryDirectory() as wd:
    for alpha in (1.0, 2.0, 3.0, 4.0, 5.0):
      config = config_lib.base()  # the official protocol (configs/mnist_oneshot.py)
      config.alpha = alpha
      train.train_and_evaluate(config, os.path.join(wd, str(alpha)), datasets,
                               log=lambda s: None)
  return time.perf_counter() - t0


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=500)
  parser.add_argument("--rounds", type=int, default=7)
  parser.add_argument("--sweep", action="store_true", help="also time the 5-alpha sweep")
  parser.add_argument("--data_dir", default="../shared/data/mnist")
  parser.add_argument("--batch", type=int, default=BATCH,
                      help="batch size (60 is the official recipe; the per-parameter "
                           "overhead of powerprop and masks shrinks relative to larger batches)")
  parser.add_argument("--out", default="", help="optional JSON file for the results")
  args = parser.parse_args()
  medians = bench(args.steps, args.rounds, args.batch)
  dense = medians["dense"]
  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}; alpha={ALPHA}, "
        f"batch {args.batch}, {args.steps}-step chunks, median of {args.rounds}")
  print(f"{'variant':28s} {'us/step':>9s} {'ratio':>7s}")
  report = {}
  for name, t in medians.items():
    print(f"{name:28s} {1e6 * t:9.1f} {t / dense:7.3f}")
    report[name] = {"seconds_per_step": t, "ratio_to_dense": t / dense}
  if args.sweep:
    seconds = time_sweep(args.data_dir)
    print(f"official 5-alpha sweep (5 x 50,000 steps, with eval and checkpoints): {seconds:.0f} s")
    report["sweep_seconds"] = seconds
  if args.out:
    with open(args.out, "w") as f:
      json.dump(report, f, indent=1)


if __name__ == "__main__":
  main()
