"""Train-step time of the MNIST MLP (LeNet-300-100, batch 60, SGD): powerprop forms, fixed
masks, RigL and Top-KAST (mask updates every 100 steps, amortised) as ratios to the plain dense
step measured in the same run.

  python scripts/bench_step.py [--steps 500] [--rounds 7] [--batch 60]
                               [--sweep --data_dir ../shared/data/mnist]

Each variant runs chunks of ``--steps`` steps in one jitted ``lax.scan`` (as the training loop
does); variants are interleaved round by round and the median per-step time is reported.
``--sweep`` also times the full official 5-alpha sweep (50,000 steps each) end to end.
"""

import argparse
import json
import os
import sys
import time

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax

import powerprop_jax as pp
from powerprop_jax import train
from powerprop_jax.sparsity import builders

ALPHA = 4.0
BATCH = 60


def _mlp(x):
  return hk.nets.MLP([300, 100, 10])(x)


def _pp_mlp(x):
  with pp.haiku.powerprop(ALPHA):
    return _mlp(x)


def _chunk_runner(apply, params, tx, forward=lambda p, s: p):
  """jit(scan) of ``steps`` SGD steps of ``apply`` with ``tx``; returns run(carry, x, y)."""

  def loss(p, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(apply(p, x), y).mean()

  def body(carry, xy):
    p, s = carry
    g = jax.grad(lambda q: loss(forward(q, s), *xy))(p)
    u, s = tx.update(g, s, p)
    return (optax.apply_updates(p, u), s), ()

  run = jax.jit(lambda carry, x, y: jax.lax.scan(body, carry, (x, y))[0])
  return run, (params, tx.init(params))


def variants():
  x0 = jnp.zeros((1, 784))
  plain = hk.without_apply_rng(hk.transform(_mlp))
  haiku_form = hk.without_apply_rng(hk.transform(_pp_mlp))
  w = plain.init(jax.random.PRNGKey(0), x0)
  v = haiku_form.init(jax.random.PRNGKey(0), x0)
  masks = pp.magnitude_masks(w, 0.9)
  sgd = optax.sgd(0.1)
  out = {
      "dense": _chunk_runner(plain.apply, w, sgd),
      "powerprop_haiku": _chunk_runner(haiku_form.apply, v, sgd),
      "powerprop_optax": _chunk_runner(plain.apply, w, pp.powerprop_optimizer(sgd, ALPHA)),
      "powerprop_haiku+masks90": _chunk_runner(
          haiku_form.apply, v, pp.masked_optimizer(sgd, masks), pp.sparsity.forward_params),
      "powerprop_optax+masks90": _chunk_runner(
          plain.apply, w, pp.masked_optimizer(pp.powerprop_optimizer(sgd, ALPHA), masks),
          pp.sparsity.forward_params),
  }
  # The library's own loop step (pytree form: w = powerprop(v) outside the model).
  model = hk.transform_with_state(lambda x, is_training: _mlp(x))
  params, net_state = model.init(jax.random.PRNGKey(0), x0, is_training=True)
  params = pp.reparameterise_init(params, ALPHA)
  step = train.make_train_step(model, sgd, train.Reparam(ALPHA))
  state = train.TrainState(jnp.zeros([], jnp.int32), params, net_state, sgd.init(params),
                           jax.random.PRNGKey(1))
  loop = jax.jit(lambda s, x, y: jax.lax.scan(
      lambda c, xy: (step(c, {"image": xy[0], "label": xy[1]})[0], ()), s, (x, y))[0])
  out["powerprop_train_loop"] = (loop, state)
  # Sparse methods in the same loop, mask updates every 100 steps (amortised in the chunk).
  for method, extra in [("rigl", {}), ("topkast", {"backward_level": 0.8})]:
    cfg = builders.default_config(method)
    cfg.update({"level": 0.9, "distribution": "erk", "update_every": 100, **extra})
    tx = pp.sparse_optimizer(sgd, pp.sparsity.build_method(cfg, params, 10**9, ALPHA))
    p0 = pp.sparsity.initial_params(params, pp.sparsity.build_method(cfg, params, 10**9, ALPHA))
    step_s = train.make_train_step(model, tx, train.Reparam(ALPHA))
    state_s = train.TrainState(jnp.zeros([], jnp.int32), p0, net_state, tx.init(p0),
                               jax.random.PRNGKey(1))
    state_s = jax.tree_util.tree_map(jnp.copy, state_s)
    loop_s = jax.jit(lambda s, x, y, f=step_s: jax.lax.scan(
        lambda c, xy: (f(c, {"image": xy[0], "label": xy[1]})[0], ()), s, (x, y))[0])
    out[f"powerprop_loop+{method}90"] = (loop_s, state_s)
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
  sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "configs"))
  import mnist_oneshot  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top
  from powerprop_jax import data  # pylint: disable=g-import-not-at-top
  datasets = data.load_mnist("idx", data_dir)
  t0 = time.perf_counter()
  with tempfile.TemporaryDirectory() as wd:
    for alpha in (1.0, 2.0, 3.0, 4.0, 5.0):
      config = mnist_oneshot.get_config()
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
