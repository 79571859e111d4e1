"""Train each alpha for each seed, then one-shot prune and evaluate (the paper's Figure 1).

  python scripts/prune_eval.py --config=configs/mnist_oneshot.py \
      --config.data.dir=../shared/data/mnist --workdir=runs/mnist_oneshot

For each (alpha, seed) a run trains in ``workdir/alpha{a}_seed{s}`` (resumed or reused if
already there), then for each keep fraction p in geomspace(min_keep, 1, num) the effective
weights are pruned one-shot (per layer, output layer min(1, 2p); or globally) and evaluated
on the test set with no fine-tuning. Writes ``results.json``, ``results.csv`` and
``accuracy_vs_weights_remaining.png`` to the workdir.
"""

import copy
import os

from absl import app
from absl import flags

from powerprop_jax import cli, data, oneshot, results, train, transform

cli.define_flags()
FLAGS = flags.FLAGS


def sweep(config, workdir, datasets, log=print):
  """Trains and prunes every (alpha, seed) of ``config.sweep``; returns the result rows."""
  fractions = oneshot.keep_fractions(config.prune.min_keep_fraction,
                                     config.prune.num_keep_fractions)
  rows = []
  for alpha in config.sweep.alphas:
    for seed in config.sweep.seeds:
      run_config = copy.deepcopy(config)
      with run_config.unlocked():
        run_config.alpha, run_config.seed = float(alpha), int(seed)
      run_dir = os.path.join(workdir, f"alpha{float(alpha):g}_seed{int(seed)}")
      log(f"== alpha={alpha:g} seed={seed}: training in {run_dir}")
      state, exp = train.train_and_evaluate(run_config, run_dir, datasets, log=log)
      evaluate = train.make_eval_fn(exp.model, exp.reparam)
      weights = transform.effective_params(state.params, exp.reparam.alpha)
      curve = oneshot.pruning_curve(
          weights, lambda m: evaluate(state.params, state.net_state, datasets["test"], m),
          fractions, config.prune.scope, config.prune.output_layer_multiplier)
      for point in curve:
        rows.append({"alpha": float(alpha), "seed": int(seed), **point})
      log(f"   dense test accuracy {curve[-1]['accuracy']:.4f}; at "
          f"{100 * curve[len(curve) // 2]['weights_remaining']:.2f}% kept "
          f"{curve[len(curve) // 2]['accuracy']:.4f}")
  return rows


def write_results(rows, workdir, title):
  results.write_json(os.path.join(workdir, "results.json"), rows)
  results.write_csv(os.path.join(workdir, "results.csv"), rows)
  results.plot_curves(os.path.join(workdir, "accuracy_vs_weights_remaining.png"), rows,
                      x="weights_remaining", y="accuracy", series="alpha", title=title,
                      xlabel="fraction of weights remaining", ylabel="test accuracy")


def main(argv):
  del argv
  config = FLAGS.config

  def run():
    datasets = data.load_datasets(config.data)
    rows = sweep(config, FLAGS.workdir, datasets)
    write_results(rows, FLAGS.workdir,
                  f"{config.data.name} {config.model.name}: one-shot pruning "
                  f"({config.prune.scope})")
    print(f"wrote {len(rows)} rows to {FLAGS.workdir}/results.json")

  cli.run(run)


if __name__ == "__main__":
  app.run(main)
