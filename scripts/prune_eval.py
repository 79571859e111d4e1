"""Train each alpha for each seed, then one-shot prune and evaluate (the paper's Figure 1).

  python scripts/prune_eval.py --config=configs/mnist_oneshot.py \
      --config.data.dir=../shared/data/mnist --workdir=runs/mnist_oneshot

For each (alpha, seed) a run trains in ``workdir/alpha{a}_seed{s}`` (resumed or reused if
already there), then for each keep fraction p in geomspace(min_keep, 1, num) the effective
weights are pruned one-shot (per layer, the output layer keeping min(1, 2p); or globally) and
evaluated on the test set with no fine-tuning. Writes ``results.json``, ``results.csv`` and
``accuracy_vs_weights_remaining.png`` to the workdir. With ``prune.structures="2:4,1:4,1:8"``
the same weights are also pruned to each N:M structure and, at the same density, without
structure: ``nm_results.json``/``.csv``/``.md``.
"""

import os

from absl import flags

from powerprop_jax import curves, masks, transform
from powerprop_jax.experiment import cli, files, models, results, sweep, train
from powerprop_jax.experiment.data import inputs

cli.define_flags()
FLAGS = flags.FLAGS


def prune_cell(config, run_dir, splits, log=print):
  """Trains one run and returns its pruning curve as rows."""
  state, exp = train.train_and_evaluate(config, run_dir, splits, log=log)
  evaluate = train.make_eval_fn(exp.model, exp.reparam, int(config.train.eval_batch_size))
  weights = transform.effective_params(state.params, exp.reparam.alpha, exp.reparam.predicate)
  curve = curves.pruning_curve(
      weights, lambda m: evaluate(state.params, state.net_state, splits.test, m),
      masks.keep_fractions(config.prune.min_keep_fraction, config.prune.num_keep_fractions),
      config.prune.scope, config.prune.output_layer_multiplier, exp.reparam.predicate,
      models.creation_order(config.model, splits.sample_input))
  mid = curve[len(curve) // 2]
  log(f"   dense test accuracy {curve[-1]['accuracy']:.4f}; at "
      f"{100 * mid['weights_remaining']:.2f}% kept {mid['accuracy']:.4f}")
  nm = curves.nm_versus_unstructured(
      weights, lambda m: evaluate(state.params, state.net_state, splits.test, m),
      curves.parse_structures(config.prune.structures), exp.reparam.predicate)
  for r in nm:
    log(f"   {r['structure']} {r['pattern']}: {r['accuracy']:.4f} at "
        f"{100 * r['weights_remaining']:.2f}% kept")
  return [{"kind": "curve", **r} for r in curve] + [{"kind": "nm", **r} for r in nm]


def run_sweep(config, workdir, splits, log=print):
  """Trains and prunes every (alpha, seed) of ``config.sweep``; returns the result rows."""
  cells = sweep.grid(alpha=[float(a) for a in config.sweep.alphas],
                     seed=[int(s) for s in config.sweep.seeds])
  return sweep.run(config, workdir, cells,
                   lambda cfg, run_dir, cell: prune_cell(cfg, run_dir, splits, log), log,
                   check=train.check_config)


def nm_table(rows) -> str:
  """Markdown: test accuracy at each N:M structure and unstructured at the same density, per
  alpha (mean ± std over seeds)."""
  stats = results.mean_by(rows, ("structure", "pattern", "alpha"), "accuracy")
  kept = results.mean_by(rows, ("structure",), "weights_remaining")
  dense = {r["structure"]: r["dense_layers"] for r in rows}
  alphas = sorted({r["alpha"] for r in rows})
  lines = ["| structure | pattern | weights kept | " + " | ".join(f"alpha {a:g}" for a in alphas)
           + " | dense layers |", "|---|---|---|" + "---|" * len(alphas) + "---|"]
  for s, pattern in sorted({(r["structure"], r["pattern"]) for r in rows},
                           key=lambda k: (-kept[(k[0],)][0], k[1] == "unstructured")):
    cells = [(lambda m, sd, n: f"{m:.4f}" + (f" ± {sd:.4f}" if n > 1 else ""))(
        *stats[(s, pattern, a)]) if (s, pattern, a) in stats else "-" for a in alphas]
    lines.append(f"| {s} | {pattern} | {100 * kept[(s,)][0]:.1f}% | " + " | ".join(cells)
                 + f" | {dense[s] or 'none'} |")
  return "\n".join(lines) + "\n"


def write_results(rows, workdir, title):
  curve = [{k: v for k, v in r.items() if k != "kind"} for r in rows if r["kind"] == "curve"]
  nm = [{k: v for k, v in r.items() if k != "kind"} for r in rows if r["kind"] == "nm"]
  results.write_json(os.path.join(workdir, "results.json"), curve)
  results.write_csv(os.path.join(workdir, "results.csv"), curve)
  results.plot_curves(os.path.join(workdir, "accuracy_vs_weights_remaining.png"), curve,
                      x="weights_remaining", y="accuracy", series="alpha", title=title,
                      xlabel="fraction of weights remaining", ylabel="test accuracy")
  if nm:
    results.write_json(os.path.join(workdir, "nm_results.json"), nm)
    results.write_csv(os.path.join(workdir, "nm_results.csv"), nm)
    files.atomic_write(os.path.join(workdir, "nm_results.md"), nm_table(nm))


def main(argv):
  del argv
  config = FLAGS.config

  def run():
    splits = inputs.load_validated(config, lambda c: curves.check_config(c.prune),
                                   sweep.check_config)
    rows = run_sweep(config, FLAGS.workdir, splits)
    write_results(rows, FLAGS.workdir,
                  f"{config.data.name} {config.model.name}: one-shot pruning "
                  f"({config.prune.scope})")
    print(f"wrote {len(rows)} rows to {FLAGS.workdir}/results.json")

  cli.run(run)


if __name__ == "__main__":
  cli.run_app(main)
