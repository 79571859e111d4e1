"""Sparse training on MNIST: method x alpha x sparsity x seed, one table.

  python scripts/sparse_mnist.py --config=configs/mnist_sparse.py \
      --config.data.dir=../shared/data/mnist --workdir=runs/mnist_sparse

Each run trains in ``workdir/<method>_s<level>_a<alpha>_seed<seed>`` (resumed if there) with the
method's masks in the optimizer state; the test accuracy of the final sparse model (forward
masks applied) is recorded. Top-KAST uses the paper's backward sparsities (forward 80/90/95%
-> backward 50/80/90%).
Writes ``results.json``, ``results.csv`` and ``accuracy_by_method.png``.
"""

import copy
import os

from absl import app
from absl import flags

from powerprop_jax import cli, data, masks, results, sparsity, train

cli.define_flags()
FLAGS = flags.FLAGS

# Top-KAST backward sparsity for each forward sparsity (PAPER.md section 4 table).
TOPKAST_BACKWARD = {0.8: 0.5, 0.9: 0.8, 0.95: 0.9}


def backward_level(level: float) -> float:
  return TOPKAST_BACKWARD.get(round(level, 4), max(0.0, 2 * level - 1.0))


def run_one(config, workdir, datasets, method, level, alpha, seed, log=print):
  cfg = copy.deepcopy(config)
  with cfg.unlocked():
    cfg.alpha, cfg.seed = float(alpha), int(seed)
    cfg.sparsity.method, cfg.sparsity.seed = method, int(seed)
    cfg.sparsity.level = float(level) if method != "none" else 0.0
    if method == "topkast":
      cfg.sparsity.backward_level = backward_level(level)
  name = f"{method}_s{level:g}_a{alpha:g}_seed{seed}"
  state, exp = train.train_and_evaluate(cfg, os.path.join(workdir, name), datasets, log=log)
  sparse = sparsity.find_sparse_state(state.opt_state)
  forward = None if sparse is None else sparse.masks
  evaluate = train.make_eval_fn(exp.model, exp.reparam)
  return {"method": method, "sparsity": float(level) if method != "none" else 0.0,
          "alpha": float(alpha), "seed": int(seed),
          "realised_sparsity": 0.0 if forward is None else masks.sparsity_of(forward),
          "test_accuracy": evaluate(state.params, state.net_state, datasets["test"], forward)}


def main(argv):
  del argv
  config = FLAGS.config

  def run():
    datasets = data.load_datasets(config.data)
    rows = []
    for method in config.sweep.methods:
      for level in (config.sweep.levels if method != "none" else (0.0,)):
        for alpha in config.sweep.alphas:
          for seed in config.sweep.seeds:
            print(f"== {method} sparsity={level:g} alpha={alpha:g} seed={seed}", flush=True)
            rows.append(run_one(config, FLAGS.workdir, datasets, method, level, alpha, seed))
            print(f"   test accuracy {rows[-1]['test_accuracy']:.4f} at sparsity "
                  f"{rows[-1]['realised_sparsity']:.3f}", flush=True)
            results.write_json(os.path.join(FLAGS.workdir, "results.json"), rows)
    results.write_csv(os.path.join(FLAGS.workdir, "results.csv"), rows)
    labelled = [{**r, "run": f"{r['method']} a={r['alpha']:g}"} for r in rows if r["sparsity"]]
    if labelled:
      results.plot_curves(os.path.join(FLAGS.workdir, "accuracy_by_method.png"), labelled,
                          x="sparsity", y="test_accuracy", series="run", logx=False,
                          title="MNIST LeNet-300-100 sparse training", xlabel="sparsity",
                          ylabel="test accuracy")
    for (method, level, alpha), (mean, std, n) in sorted(results.mean_by(
        rows, ("method", "sparsity", "alpha"), "test_accuracy").items()):
      print(f"{method:8s} sparsity={level:<5g} alpha={alpha:g}: {mean:.4f} ± {std:.4f} (n={n})")

  cli.run(run)


if __name__ == "__main__":
  app.run(main)
