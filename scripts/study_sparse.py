"""Study 1: sparse-to-sparse training, alpha x sparsity x method, lr tuned per alpha.

  python scripts/study_sparse.py --config=configs/study_sparse.py --workdir=runs/study_sparse \
      [--phase=all|tune|final|report] [--shard=0/2]

Phases (each resumable: every run has its own workdir and checkpoints, a finished run is
reused):
* tune: every (method, level, alpha) and the dense reference per alpha, at every lr of
  ``sweep.learning_rates``, seed ``sweep.seeds[0]``; the lr with the best final validation
  accuracy is chosen per cell (ties: the smaller lr; a run whose loss diverges scores 0);
* final: the other seeds at the chosen lr;
* report: mean and spread of test accuracy per cell next to the dense reference, as
  ``results.json``, ``results.csv``, ``study_sparse.md`` and ``accuracy_vs_alpha.png``.
``--shard=i/n`` runs every n-th run only, so n processes can share a phase (one per core).
"""

from collections import defaultdict
import os

from absl import flags
import numpy as np

from powerprop_jax.experiment import cli, files, results, sweep, train
from powerprop_jax.experiment import workdir as workdir_lib
from powerprop_jax.experiment.data import inputs

cli.define_flags()
flags.DEFINE_enum("phase", "all", ["all", "tune", "final", "report"], "Which phase to run.")
flags.DEFINE_string("shard", "0/1", "i/n: run every n-th run starting at i.")
FLAGS = flags.FLAGS
DISTRIBUTION = {"topkast": "uniform", "rigl": "erk", "none": "uniform"}


def cells(config) -> list[dict]:
  """(method, level, alpha) cells, the dense reference (method none, level 0) first."""
  out = [{"sparsity.method": "none", "sparsity.level": 0.0, "alpha": float(a)}
         for a in config.sweep.alphas]
  for method in config.sweep.methods:
    for level in config.sweep.levels:
      for alpha in config.sweep.alphas:
        out.append({"sparsity.method": method, "sparsity.level": float(level),
                    "alpha": float(alpha)})
  return out


def run_name(run: dict) -> str:
  return (f"{run['sparsity.method']}_s{run['sparsity.level']:g}_a{run['alpha']:g}"
          f"_lr{run['optimizer.learning_rate']:g}_seed{run['seed']}")


def _run(cell: dict, lr: float, seed: int) -> dict:
  """A run of ``cell`` at ``lr`` and ``seed`` (the method's seed and distribution with it)."""
  return {**cell, "optimizer.learning_rate": float(lr), "seed": int(seed),
          "sparsity.seed": int(seed),
          "sparsity.distribution": DISTRIBUTION[cell["sparsity.method"]]}


def train_run(config, run_dir, run, splits, log):
  """Trains one run; its final metrics record is the cell's one row."""
  del run
  train.train_and_evaluate(config, run_dir, splits, log=lambda m: None)
  final = workdir_lib.metrics_records(run_dir)[-1]
  log(f"   validation {final['validation_accuracy']:.4f} test {final['test_accuracy']:.4f}")
  return [final]


def _score(outcome: sweep.Outcome) -> float | None:
  """A tuning run's validation accuracy; 0 if it diverged; None if it has not finished."""
  if outcome.state == sweep.DIVERGED:
    return 0.0
  return outcome.rows[0]["validation_accuracy"] if outcome.state == sweep.FINISHED else None


def tune_runs(config) -> list[dict]:
  seed = int(config.sweep.seeds[0])
  return [_run(c, lr, seed) for c in cells(config) for lr in config.sweep.learning_rates]


def chosen_lr(config, workdir, cell) -> float | None:
  """The lr of the best tuning run's validation accuracy (ties: the smaller lr; diverged:
  0); None until all of the cell's tuning runs have finished."""
  seed = int(config.sweep.seeds[0])
  runs = [_run(cell, lr, seed) for lr in config.sweep.learning_rates]
  scores = [_score(o) for o in sweep.outcomes(config, workdir, runs, run_name)]
  if any(s is None for s in scores):
    return None
  return min((-s, float(lr)) for s, lr in zip(scores, config.sweep.learning_rates))[1]


def final_runs(config, workdir) -> tuple[list[dict], list[dict]]:
  """(final runs of every cell whose tuning has finished, cells still being tuned)."""
  out, waiting = [], []
  for c in cells(config):
    lr = chosen_lr(config, workdir, c)
    if lr is None:
      waiting.append(c)
      continue
    out += [_run(c, lr, s) for s in config.sweep.seeds]
  return out, waiting


def report(config, workdir, log=print) -> list[dict]:
  """Collects every finished final run; writes the results files; returns the rows."""
  rows, missing = [], 0
  for c in cells(config):
    lr = chosen_lr(config, workdir, c)
    runs = [] if lr is None else [_run(c, lr, s) for s in config.sweep.seeds]
    missing += len(config.sweep.seeds) - len(runs)
    for o in sweep.outcomes(config, workdir, runs, run_name):
      if o.state == sweep.MISSING:
        missing += 1
        continue
      done = (o.rows[0] if o.state == sweep.FINISHED else
              {"validation_accuracy": 0.0, "test_accuracy": float("nan")})
      rows.append({"method": c["sparsity.method"], "sparsity": c["sparsity.level"],
                   "alpha": c["alpha"], "learning_rate": lr, "seed": o.cell["seed"],
                   "validation_accuracy": done["validation_accuracy"],
                   "test_accuracy": done["test_accuracy"],
                   "realised_sparsity": done.get("sparsity", 0.0)})
  results.write_json(os.path.join(workdir, "results.json"), rows)
  results.write_csv(os.path.join(workdir, "results.csv"), rows)
  table = summary_table(rows)
  files.atomic_write(os.path.join(workdir, "study_sparse.md"), table + "\n")
  if any(r["method"] != "none" for r in rows):
    plot_panels(os.path.join(workdir, "accuracy_vs_alpha.png"), rows,
                f"{config.data.name} {config.model.name}: sparse-to-sparse, lr tuned per cell")
  log(table)
  log(f"{len(rows)} runs reported, {missing} not finished")
  return rows


def plot_panels(path: str, rows: list[dict], title: str) -> None:
  """One panel per method: test accuracy (mean over seeds, min..max band) against alpha, a
  line per sparsity, the dense reference dashed. Sparsities whose best mean is under half the
  dense reference's (a collapsed network) are left off the axis and named in the legend, so
  they do not flatten the differences that matter."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  methods = sorted({r["method"] for r in rows} - {"none"})
  fig, axes = plt.subplots(1, len(methods), figsize=(5.2 * len(methods), 4.2), squeeze=False)
  acc = defaultdict(list)  # (method, sparsity, alpha) -> test accuracy per seed
  for r in rows:
    acc[(r["method"], r["sparsity"], r["alpha"])].append(r["test_accuracy"])
  floor = 0.5 * max((np.mean(v) for k, v in acc.items() if k[0] == "none"), default=0.0)
  for ax, method in zip(axes[0], methods):
    lines = [("none", 0.0, "--")] + [(method, level, "-") for level in
                                     sorted({k[1] for k in acc if k[0] == method})]
    for m, level, style in lines:
      alphas = sorted(a for (mm, ll, a) in acc if (mm, ll) == (m, level))
      means = [np.mean(acc[(m, level, a)]) for a in alphas]
      name = "dense" if m == "none" else f"{100 * level:g}%"
      if max(means) < floor:
        ax.plot([], [], style, label=f"{name} (off scale: {min(means):.2f}-{max(means):.2f})")
        continue
      ax.plot(alphas, means, style, marker="o", ms=3, label=name)
      ax.fill_between(alphas, [min(acc[(m, level, a)]) for a in alphas],
                      [max(acc[(m, level, a)]) for a in alphas], alpha=0.15)
    ax.set_ylim(bottom=max(floor, ax.get_ylim()[0]))
    ax.set_title(method)
    ax.set_xlabel("alpha")
    ax.set_ylabel("test accuracy")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
  fig.suptitle(title)
  fig.tight_layout()
  results.save_figure(fig, path)


def summary_table(rows: list[dict]) -> str:
  """Markdown: one row per (method, sparsity), mean ± std (n) of test accuracy per alpha,
  the chosen lr, and the dense reference row."""
  stats = results.mean_by(rows, ("method", "sparsity", "alpha"), "test_accuracy")
  lrs = {(r["method"], r["sparsity"], r["alpha"]): r["learning_rate"] for r in rows}
  alphas = sorted({r["alpha"] for r in rows})
  lines = ["| method | sparsity | " + " | ".join(f"alpha {a:g}" for a in alphas) + " |",
           "|---|---|" + "---|" * len(alphas)]
  for method, level in sorted({(r["method"], r["sparsity"]) for r in rows},
                              key=lambda k: (k[0] != "none", k)):
    cells_ = []
    best = max((stats[(method, level, a)][0] for a in alphas if (method, level, a) in stats),
               default=np.nan)
    for a in alphas:
      if (method, level, a) not in stats:
        cells_.append("not run")
        continue
      mean, std, n = stats[(method, level, a)]
      text = f"{mean:.4f} ± {std:.4f} (lr {lrs[(method, level, a)]:g}, n={n})"
      cells_.append(f"**{text}**" if mean == best else text)
    name = "dense" if method == "none" else method
    lines.append(f"| {name} | {100 * level:g}% | " + " | ".join(cells_) + " |")
  return "\n".join(lines)


def main(argv):
  del argv
  config = FLAGS.config

  def run():
    shard = cli.parse_shard(FLAGS.shard)
    train.check_config(config)
    sweep.check_config(config)
    workdir = FLAGS.workdir
    if FLAGS.phase in ("all", "tune", "final"):
      splits = inputs.load_validated(config)
      go = lambda cfg, run_dir, run: train_run(cfg, run_dir, run, splits, print)  # noqa: E731
    if FLAGS.phase in ("all", "tune"):
      sweep.run_cells(config, workdir, tune_runs(config), go, name=run_name,
                      check=train.check_config, shard=shard, phase="tune")
    if FLAGS.phase in ("all", "final"):
      runs, waiting = final_runs(config, workdir)
      if waiting:
        print(f"{len(waiting)} cells are still being tuned (another --shard?); their final "
              "runs wait: rerun --phase=final when every tuning shard has finished")
      sweep.run_cells(config, workdir, runs, go, name=run_name, check=train.check_config,
                      shard=shard, phase="final")
      if waiting:
        return
    if FLAGS.phase in ("all", "report"):
      report(config, workdir)

  cli.run(run)


if __name__ == "__main__":
  cli.run_app(main)
