"""Study 2: continual learning at capacity (Permuted MNIST, EfficientPackNet vs PackNet).

  python scripts/study_continual.py --config=configs/study_continual.py \
      --workdir=runs/study_continual [--phase=all|tune|runs|report] [--shard=0/2]

Phases (each resumable; every stream checkpoints after each task):
* tune: per alpha of ``sweep.alphas`` and lr of ``sweep.learning_rates``, train task 0 alone
  (``steps_per_task`` steps) and keep the lr with the best unpruned validation accuracy P
  among those one grid step from divergence (a run whose loss diverges scores 0, and the lr
  below it is passed over: at the edge of stability a later task or seed can diverge);
* runs: EfficientPackNet per (alpha, gamma of ``sweep.gammas``) at the alpha's lr, and PackNet
  per ``sweep.prune_fractions`` at alpha 1, every stream up to ``continual.num_tasks`` tasks or
  until a layer has no free weight left;
* report: tasks accommodated, capacity per task, average accuracy over the tasks seen, as
  ``results.json``/``.csv``, ``study_continual.md`` and ``accuracy_matrices.png`` (one
  accuracy matrix per stream) and ``capacity.png``.
"""

import os

from absl import flags
import numpy as np

from powerprop_jax import checks
from powerprop_jax.experiment import cli, files, results, sweep, train
from powerprop_jax.experiment import continual
from powerprop_jax.experiment.data import inputs

cli.define_flags()
flags.DEFINE_enum("phase", "all", ["all", "tune", "runs", "report"], "Which phase to run.")
flags.DEFINE_string("shard", "0/1", "i/n: run every n-th stream starting at i.")
FLAGS = flags.FLAGS


class TuningUnfinished(checks.UserError):
  """The streams need every alpha's tuned lr, and some tuning run has not finished."""


def _stream_cell(config, run_dir, cell, datasets, log):
  """Runs (or resumes) one stream; its summary is the cell's one row."""
  del cell
  return [continual.summary(continual.run_continual(config, datasets, run_dir, log=log),
                            config)]


def _summaries(config, workdir, cells) -> list[dict | None]:
  """Each cell's stream summary tagged with the cell; ``{"diverged": ...}`` for a stream that
  diverged; None for one not run yet."""
  out = []
  for o in sweep.outcomes(config, workdir, cells):
    if o.state == sweep.FINISHED:
      out.append({**o.rows[0], **sweep.tags(o.cell)})
    elif o.state == sweep.DIVERGED:
      out.append({**sweep.tags(o.cell), "diverged": o.error})
    else:
      out.append(None)
  return out


def _task0_score(summary: dict) -> float:
  """A tuning run's score: task 0's unpruned validation accuracy P, 0 if it diverged."""
  return 0.0 if "diverged" in summary else summary["dense_val"][0]


def tune_cells(config):
  return sweep.grid(alpha=[float(a) for a in config.sweep.alphas],
                    optimizer__learning_rate=[float(lr) for lr in config.sweep.learning_rates],
                    continual__num_tasks=[1], continual__finetune_steps=[0],
                    continual__method=["packnet"])


def chosen_lr(config, workdir, alpha) -> float:
  """The lr with the best task-0 validation accuracy among those at least one grid step
  from divergence: an lr qualifies if it is the grid's smallest or the next larger one
  did not diverge (an lr at the edge of stability trains task 0 but can diverge on a later
  task or seed)."""
  cells = [c for c in tune_cells(config) if c["alpha"] == alpha]
  found = _summaries(config, os.path.join(workdir, "tune"), cells)
  if any(s is None for s in found):
    raise TuningUnfinished(f"tuning for alpha {alpha:g} has not finished in "
                           f"{os.path.join(workdir, 'tune')}: run --phase=tune first (every "
                           "--shard), then --phase=runs")
  summaries = {c["optimizer.learning_rate"]: s for c, s in zip(cells, found)}
  lrs = sorted(summaries)
  eligible = [lr for i, lr in enumerate(lrs)
              if i == 0 or i + 1 == len(lrs) or "diverged" not in summaries[lrs[i + 1]]]
  return min(eligible, key=lambda lr: (-_task0_score(summaries[lr]), lr))


def stream_cells(config, workdir):
  """Every stream: EfficientPackNet per (alpha, gamma) at the alpha's tuned lr, PackNet per
  prune fraction at alpha 1, each once per seed of ``sweep.seeds`` (the seed sets the
  initialisation, the batches and the task permutations)."""
  out = []
  for alpha in config.sweep.alphas:
    lr = chosen_lr(config, workdir, float(alpha))
    out += [{"continual.method": "efficient_packnet", "alpha": float(alpha),
             "optimizer.learning_rate": lr, "continual.gamma": float(g)}
            for g in config.sweep.gammas]
  lr = chosen_lr(config, workdir, 1.0)
  out += [{"continual.method": "packnet", "alpha": 1.0, "optimizer.learning_rate": lr,
           "continual.prune_fraction": float(f)} for f in config.sweep.prune_fractions]
  return [{**c, "seed": int(s), "continual.permutation_seed": int(s)}
          for s in config.sweep.seeds for c in out]


def label(s: dict) -> str:
  if s["method"] == "packnet":
    return f"PackNet keep {1 - s['prune_fraction']:.0%}, alpha {s['alpha']:g}"
  return f"EPN gamma {s['gamma']:g}, alpha {s['alpha']:g}"


def report(config, workdir, log=print):
  """Mean ± std over seeds per stream (tasks accommodated, capacity, average accuracy) as
  ``study_continual.md``; per-task rows in ``results.csv``; every stream's summary in
  ``results.json``; the capacity plot (mean and min..max band over seeds) and the accuracy
  matrices of the first seed."""
  summaries = [s for s in _summaries(config, workdir, stream_cells(config, workdir)) if s]
  diverged = [s for s in summaries if "diverged" in s]
  summaries = [s for s in summaries if "diverged" not in s]
  rows = [{"stream": label(s), "method": s["method"], "alpha": s["alpha"], "seed": s["seed"],
           "task": t, "capacity_used": s["capacity_used"][t],
           "cumulative_capacity": float(sum(s["capacity_used"][:t + 1])),
           "final_accuracy": s["acc"][-1][t], "tasks_accommodated": s["tasks_accommodated"]}
          for s in summaries for t in range(s["tasks_accommodated"])]
  results.write_json(os.path.join(workdir, "results.json"), summaries + diverged)
  results.write_csv(os.path.join(workdir, "results.csv"), rows)
  table = summary_table(summaries) + "".join(
      f"\n\nDiverged (not in the means): {label(s)}, lr {s['learning_rate']:g}, seed {s['seed']}: "
      f"{s['diverged']}" for s in diverged)
  files.atomic_write(os.path.join(workdir, "study_continual.md"), table + "\n")
  if rows:
    results.plot_curves(os.path.join(workdir, "capacity.png"), rows, x="task",
                        y="cumulative_capacity", series="stream", logx=False,
                        title="Permuted MNIST: capacity used (mean, min..max over seeds)",
                        xlabel="task", ylabel="cumulative fraction of weights owned")
    first = int(config.sweep.seeds[0])
    plot_matrices(os.path.join(workdir, "accuracy_matrices.png"),
                  [s for s in summaries if s["seed"] == first])
  log(table)
  return summaries


def summary_table(summaries: list[dict]) -> str:
  """Markdown, one row per stream: mean ± std over its seeds of each measure."""
  per_stream = {}
  for s in summaries:
    per_stream.setdefault(label(s), []).append(s)
  lines = ["| stream | lr | seeds | tasks accommodated | capacity per task (mean) | "
           "total capacity | average accuracy over tasks seen |", "|---|---|---|---|---|---|---|"]

  def stat(values, fmt):
    return f"{np.mean(values):{fmt}} ± {np.std(values):{fmt}}"

  for name, group in per_stream.items():
    lines.append(
        f"| {name} | {group[0]['learning_rate']:g} | {len(group)} | "
        f"{stat([g['tasks_accommodated'] for g in group], '.1f')} | "
        f"{stat([np.mean(g['capacity_used']) for g in group], '.4f')} | "
        f"{stat([g['total_capacity'] for g in group], '.4f')} | "
        f"{stat([g['average_accuracy'] for g in group], '.4f')} |")
  return "\n".join(lines)


def plot_matrices(path: str, summaries: list[dict]) -> None:
  """One heat map per stream: test accuracy on task j (x) after training task i (y)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  cols = min(4, len(summaries))
  rows = -(-len(summaries) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows), squeeze=False)
  for ax, s in zip(axes.ravel(), summaries):
    acc = np.array([[np.nan if a is None else a for a in row] for row in s["acc"]], float)
    im = ax.imshow(acc, vmin=0.5, vmax=1.0, cmap="viridis")
    ax.set_title(label(s), fontsize=8)
    ax.set_xlabel("task evaluated", fontsize=7)
    ax.set_ylabel("after training task", fontsize=7)
  for ax in axes.ravel()[len(summaries):]:
    ax.axis("off")
  fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="test accuracy")
  results.save_figure(fig, path, dpi=110)


def main(argv):
  del argv
  config = FLAGS.config

  def run():
    shard = cli.parse_shard(FLAGS.shard)
    train.check_config(config)
    continual.check_config(config.continual)
    sweep.check_config(config)
    if FLAGS.phase != "report":
      datasets = inputs.load_validated(config).as_dict()
    go = lambda log: (lambda cfg, run_dir, cell: _stream_cell(cfg, run_dir, cell,  # noqa: E731
                                                              datasets, log))
    if FLAGS.phase in ("all", "tune"):
      sweep.run_cells(config, os.path.join(FLAGS.workdir, "tune"), tune_cells(config),
                      go(lambda m: None), shard=shard, phase="tune")
    if FLAGS.phase in ("all", "runs"):
      try:
        cells = stream_cells(config, FLAGS.workdir)
      except TuningUnfinished as e:
        if FLAGS.phase == "runs":
          raise
        print(f"{e} (another --shard is still tuning)")
        return
      found = sweep.run_cells(config, FLAGS.workdir, cells, go(print), shard=shard,
                              phase="stream")
      for s in _summaries(config, FLAGS.workdir, [o.cell for o in found]):
        if s and "diverged" not in s:
          print(f"   {label(s)}: {s['tasks_accommodated']} tasks, average accuracy "
                f"{s['average_accuracy']:.4f}", flush=True)
    if FLAGS.phase in ("all", "report"):
      report(config, FLAGS.workdir)

  cli.run(run)


if __name__ == "__main__":
  cli.run_app(main)
