"""Sparse training on MNIST: method x alpha x sparsity x seed, one table.

  python scripts/sparse_mnist.py --config=configs/mnist_sparse.py \
      --config.data.dir=../shared/data/mnist --workdir=runs/mnist_sparse

Each run trains in ``workdir/<method>_s<level>_a<alpha>_seed<seed>`` (resumed if there) with
the method's masks in the optimizer state; the test accuracy of the final sparse model
(forward masks applied) is the loop's ``test_accuracy``. Top-KAST uses the paper's backward
sparsity (80/90/95% -> 50/80/90%, else 2 * level - 1) unless ``sparsity.backward_level`` is set.
Writes ``results.json``, ``results.csv`` and ``accuracy_by_method.png``.
"""

import os

from absl import flags

from powerprop_jax import masks
from powerprop_jax.experiment import cli, results, sweep, train
from powerprop_jax.experiment.data import inputs

cli.define_flags()
FLAGS = flags.FLAGS


def sparse_cell(config, run_dir, splits, log=print):
  """Trains one (method, level, alpha, seed) run; one result row."""
  state, exp = train.train_and_evaluate(config, run_dir, splits, log=log)
  forward = train.forward_masks(state.opt_state)
  evaluate = train.make_eval_fn(exp.model, exp.reparam, int(config.train.eval_batch_size))
  row = {"sparsity": float(config.sparsity.level),
         "realised_sparsity": 0.0 if forward is None else masks.sparsity_of(forward),
         "test_accuracy": evaluate(state.params, state.net_state, splits.test, forward)}
  log(f"   test accuracy {row['test_accuracy']:.4f} at sparsity "
      f"{row['realised_sparsity']:.3f}")
  return [row]


def cells(config):
  """method x level x alpha x seed (the dense method once, at level 0)."""
  out = []
  for method in config.sweep.methods:
    levels = [float(lv) for lv in config.sweep.levels] if method != "none" else [0.0]
    out += sweep.grid(sparsity__method=[method], sparsity__level=levels,
                      alpha=[float(a) for a in config.sweep.alphas],
                      seed=[int(s) for s in config.sweep.seeds])
  for c in out:
    c["sparsity.seed"] = c["seed"]
  return out


def main(argv):
  del argv
  config = FLAGS.config

  def run():
    splits = inputs.load_validated(config, sweep.check_config)
    rows = sweep.run(config, FLAGS.workdir, cells(config),
                     lambda cfg, run_dir, cell: sparse_cell(cfg, run_dir, splits),
                     name=lambda c: (f"{c['sparsity.method']}_s{c['sparsity.level']:g}"
                                     f"_a{c['alpha']:g}_seed{c['seed']}"),
                     check=train.check_config)
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
  cli.run_app(main)
