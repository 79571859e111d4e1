"""Continual learning on Permuted MNIST with PackNet / EfficientPackNet, alpha sweep.

  python scripts/continual.py --config=configs/continual_pmnist.py \
      --config.data.dir=../shared/data/mnist --workdir=runs/continual

For each (alpha, seed) of ``config.sweep`` the task stream is trained in
``workdir/alpha{a}_seed{s}`` (checkpointed after every task; a killed run resumes at the next
task). Writes ``results.json`` (per run: the accuracy matrix acc[i][j] = test accuracy on
task j after training task i, null for j > i; average accuracy = mean of the last row;
capacity used per task; keep fractions; P and P_s per task), ``results.csv`` (one row per
(alpha, seed, task)) and ``capacity_and_accuracy.png``.
"""

import os

from absl import flags

from powerprop_jax.experiment import cli, results, sweep
from powerprop_jax.experiment import continual
from powerprop_jax.experiment.data import inputs

cli.define_flags()
FLAGS = flags.FLAGS


def continual_cell(config, run_dir, datasets, log=print):
  """Runs (or resumes) one task stream; its summary (``continual.summary``) is the cell's row."""
  summary = continual.summary(continual.run_continual(config, datasets, run_dir, log=log),
                              config)
  log(f"   average accuracy {summary['average_accuracy']:.4f}; capacity per task "
      + " ".join(f"{c:.4f}" for c in summary["capacity_used"])
      + f" (total {summary['total_capacity']:.4f})")
  return [summary]


def task_rows(summary):
  """One CSV row per task of a stream's summary."""
  acc = summary["acc"]
  return [{"alpha": summary["alpha"], "seed": summary["seed"], "method": summary["method"],
           "task": t, "capacity_used": summary["capacity_used"][t],
           "cumulative_capacity": float(sum(summary["capacity_used"][:t + 1])),
           "keep_fraction": summary["keep_fraction"][t], "accuracy_after_task": acc[t][t],
           "final_accuracy": acc[-1][t], "average_accuracy": summary["average_accuracy"]}
          for t in range(summary["tasks_accommodated"])]


def run_sweep(config, workdir, datasets, log=print):
  """Runs every (alpha, seed); returns (stream summaries for results.json, per-task rows)."""
  cells = sweep.grid(alpha=[float(a) for a in config.sweep.alphas],
                     seed=[int(s) for s in config.sweep.seeds])
  runs = sweep.run(config, workdir, cells,
                   lambda cfg, run_dir, cell: continual_cell(cfg, run_dir, datasets, log), log)
  return runs, [row for run in runs for row in task_rows(run)]


def plot(path, rows, title):
  """Left: capacity used per task; right: final test accuracy per task; one line per alpha."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for ax, key, label in ((axes[0], "capacity_used", "capacity used (fraction of weights)"),
                         (axes[1], "final_accuracy", "test accuracy after the last task")):
    means = results.mean_by(rows, ["alpha", "task"], key)
    for alpha in sorted({a for a, _ in means}):
      tasks = sorted(t for a, t in means if a == alpha)
      ax.plot(tasks, [means[(alpha, t)][0] for t in tasks], marker="o", label=f"alpha={alpha:g}")
    ax.set_xlabel("task")
    ax.set_ylabel(label)
    ax.grid(True, alpha=0.3)
    ax.legend()
  fig.suptitle(title)
  fig.tight_layout()
  results.save_figure(fig, path)


def main(argv):
  del argv
  config = FLAGS.config

  def run():
    runs, rows = run_sweep(config, FLAGS.workdir, inputs.load_validated(
        config, lambda c: continual.check_config(c.continual), sweep.check_config).as_dict())
    results.write_json(os.path.join(FLAGS.workdir, "results.json"), runs)
    results.write_csv(os.path.join(FLAGS.workdir, "results.csv"), rows)
    plot(os.path.join(FLAGS.workdir, "capacity_and_accuracy.png"), rows,
         f"Permuted MNIST, {config.continual.method}, {config.continual.num_tasks} tasks")
    print(f"wrote {len(runs)} runs to {FLAGS.workdir}/results.json")

  cli.run(run)


if __name__ == "__main__":
  cli.run_app(main)
