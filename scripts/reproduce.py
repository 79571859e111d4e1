"""Reproduces a table: the paper's ImageNet rows or one of the README's small tables.

  python scripts/reproduce.py --table imagenet --dry-run          # every row, its command
  python scripts/reproduce.py --table imagenet --rows topkast90,topkast90_pp \
      --data_dir=/data/tfds                                       # run rows, then the table
  python scripts/reproduce.py --table imagenet --launch           # one cluster line per row
  python scripts/reproduce.py --table imagenet --smoke            # every row, 2 steps, mock data
  python scripts/reproduce.py --table mnist --steps 300 --alphas 1,2   # or mnist_sparse,
                                                                 # cifar, continual

Runs the training scripts beside this one, collects what they wrote (through
``powerprop_jax.experiment.workdir``) and writes ``reproduce_<table>.md`` and ``.csv`` to
``--out`` (default results/reproduce). Exit status 2 for bad input (an unknown row), 1 when a
run failed.

* ``imagenet``: one run per row of ``configs/imagenet_resnet50.py`` in ``RUNS/imagenet/ROW``
  (``scripts/train.py``). A row's top-1 is the last record of its ``metrics.jsonl`` holding
  ``test_accuracy`` (else ``validation_accuracy``: ImageNet's validation split is its test
  set), taken only if it is the record of the row's last step; it is shown beside the
  published baseline top-1 and the difference. A row with no run says "not run"; a run that
  has not reached its last step says "no final metric"; a run recorded with other defining
  fields (``workdir.run_fields``: the one definition of a run) says "other config". Nothing
  is invented.
* ``mnist`` / ``cifar`` (``scripts/prune_eval.py``), ``mnist_sparse``
  (``scripts/sparse_mnist.py``), ``continual`` (``scripts/continual.py``): the script runs the
  sweep into ``RUNS/<table>`` and its ``results.json`` becomes a table of mean ± std over seeds.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
from collections import defaultdict
from types import ModuleType
from typing import Any, Callable, Mapping, Optional, Sequence

import ml_collections
import numpy as np

from powerprop_jax import checks
from powerprop_jax.experiment import config as config_lib
from powerprop_jax.experiment import files, preemption, results
from powerprop_jax.experiment import workdir as workdir_lib
from powerprop_jax.experiment.data import imagenet

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGENET_CONFIG = "configs/imagenet_resnet50.py"
TRAIN_SCRIPT = "scripts/train.py"
TABLES = ("imagenet", "mnist", "mnist_sparse", "cifar", "continual")


# Row status in the ImageNet table.
OK, NOT_RUN, NO_FINAL, OTHER_CONFIG, FAILED, SMOKE = (
    "ok", "not run", "no final metric", "other config", "failed", "smoke")

# --smoke: every ImageNet row end to end on tfds mock data with a 10-layer ResNet.
SMOKE_STEPS = 2
SMOKE_EXAMPLES = 8
SMOKE_OVERRIDES = {"model.name": "resnet_tiny", "data.image_size": 32, "train.batch_size": 4,
                   "train.eval_batch_size": 4, "train.chunk_steps": 1, "data.workers": 0}

Log = Callable[[str], None]


class ReproduceError(checks.UserError):
  """Bad input (an unknown row, a bad --alphas value, ...): one line, exit status 2."""


# ---------------------------------------------------------------------------------------------
# Config overrides


def set_field(config: ml_collections.ConfigDict, key: str, value: Any) -> None:
  """``config.a.b = value`` for the dotted ``key`` "a.b" (the field must exist)."""
  *parents, leaf = key.split(".")
  node = config
  for p in parents:
    node = node[p]
  if leaf not in node:
    raise ReproduceError(f"unknown config field {key!r}")
  with node.ignore_type():
    node[leaf] = value


def with_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, Any]
                   ) -> ml_collections.ConfigDict:
  """A copy of ``config`` with the dotted ``overrides`` applied."""
  config = copy.deepcopy(config)
  with config.unlocked():
    for key, value in overrides.items():
      set_field(config, key, value)
  return config


def override_flags(overrides: Mapping[str, Any]) -> list[str]:
  """``--config.key=value`` flags (tuples as ``(a,b)``) for ``scripts/*.py``."""
  def text(v: Any) -> str:
    if isinstance(v, (tuple, list)):
      return "(" + ",".join(text(x) for x in v) + ("," if len(v) == 1 else "") + ")"
    if isinstance(v, bool):
      return str(v)
    return repr(v) if isinstance(v, float) else str(v)
  return [f"--config.{k}={text(v)}" for k, v in overrides.items()]


def budget_overrides(config: ml_collections.ConfigDict, steps: int) -> dict[str, Any]:
  """Overrides that shorten (or stretch) a row to ``steps`` steps, scaling every field given
  in absolute steps with it: the warm-up and the sparsity window. Fractions (lr decay
  boundaries) already scale."""
  if steps < 1:
    raise ReproduceError(f"--steps must be >= 1, got {steps}")
  scale = steps / int(config.train.steps)
  out: dict[str, Any] = {"train.steps": int(steps)}
  warmup = int(config.optimizer.warmup_steps)
  if warmup:
    out["optimizer.warmup_steps"] = min(int(round(warmup * scale)), steps - 1)
  for field in ("begin_step", "end_step"):
    value = int(config.sparsity[field])
    if value:
      out[f"sparsity.{field}"] = min(int(value * scale), steps)
  return out


# ---------------------------------------------------------------------------------------------
# ImageNet rows


def load_imagenet_module(path: str = IMAGENET_CONFIG) -> ModuleType:
  """The config module ``configs/imagenet_resnet50.py`` (ROWS, PUBLISHED, get_config)."""
  full = path if os.path.isabs(path) else os.path.join(REPO, path)
  return config_lib.load_module(full, "imagenet_resnet50_config")


def parse_rows(spec: str, known: Sequence[str]) -> list[str]:
  """Comma list of row names, checked against ``known`` ("" or "all" = every row)."""
  if spec in ("", "all"):
    return list(known)
  rows = [r.strip() for r in spec.split(",") if r.strip()]
  unknown = [r for r in rows if r not in known]
  if unknown:
    raise ReproduceError(f"unknown row {unknown[0]!r} for --table imagenet; known: "
                         f"{', '.join(known)}")
  return rows


def row_command(row: str, runs_dir: str, data_dir: str = "",
                overrides: Optional[Mapping[str, Any]] = None, python: str = "python"
                ) -> list[str]:
  """The ``scripts/train.py`` command line that trains ``row`` into ``runs_dir/row``."""
  cmd = [python, TRAIN_SCRIPT, f"--config={IMAGENET_CONFIG}:{row}",
         f"--workdir={os.path.join(runs_dir, row)}"]
  if data_dir:
    cmd.append(f"--config.data.dir={data_dir}")
  return cmd + override_flags(overrides or {})


@dataclasses.dataclass
class RowResult:
  row: str
  status: str
  top1: Optional[float] = None     # fraction in [0, 1]
  detail: str = ""


def collect_row(row: str, workdir: str, expected: ml_collections.ConfigDict) -> RowResult:
  """What ``workdir`` holds for ``row`` (read through ``workdir.status``): a final top-1 (the
  last step's ``test_accuracy``, else ``validation_accuracy``: ImageNet's validation split is
  its test set), or why there is none."""
  status = workdir_lib.status(workdir, expected)
  if status.state == workdir_lib.ABSENT:
    return RowResult(row, NOT_RUN)
  if status.state == workdir_lib.OTHER_CONFIG:
    return RowResult(row, OTHER_CONFIG, detail=status.detail)
  if status.state == workdir_lib.DIVERGED:
    return RowResult(row, FAILED, detail=f"{workdir}: {status.detail}")
  final = status.final or {}
  top1 = final.get("test_accuracy", final.get("validation_accuracy"))
  if status.state != workdir_lib.FINISHED or top1 is None:
    return RowResult(row, NO_FINAL, detail=status.detail or
                     f"{workdir}: the last step's record holds no accuracy")
  return RowResult(row, OK, float(top1))


def method_label(config: ml_collections.ConfigDict, multiplier: int) -> str:
  """How PAPER.md names a row's method, e.g. "Top-KAST 90/80", "RigL ERK 5x"."""
  s = config.sparsity
  pct = lambda x: f"{100 * float(x):g}"  # noqa: E731
  if s.method == "topkast":
    return f"Top-KAST {pct(s.level)}/{pct(s.backward_level)}"
  if s.method in ("rigl", "set"):
    return f"{'RigL' if s.method == 'rigl' else 'SET'} {s.distribution.upper()} {multiplier}x"
  if s.method == "gradual":
    return "gradual magnitude pruning"
  return s.method if s.method != "none" else "dense"


def imagenet_records(results_: Sequence[RowResult], module: ModuleType,
                     expected: Mapping[str, ml_collections.ConfigDict]) -> list[dict[str, Any]]:
  """One CSV record per row: the row's recipe, published baseline, top-1 and difference."""
  out = []
  for r in results_:
    c = expected[r.row]
    baseline = module.baseline_of(r.row)
    published = module.PUBLISHED.get(baseline)
    top1 = None if r.top1 is None else 100.0 * r.top1
    out.append({
        "row": r.row, "method": method_label(c, module.BASELINES[baseline][2]),
        "sparsity": float(c.sparsity.level), "alpha": float(c.alpha),
        "steps": int(c.train.steps), "baseline": baseline,
        "published_top1": "" if published is None else published,
        "top1": "" if top1 is None else round(top1, 4),
        "difference": "" if top1 is None or published is None else round(top1 - published, 4),
        "status": r.status})
  return out


def imagenet_markdown(records: Sequence[dict[str, Any]], title: str) -> str:
  lines = [f"# {title}", "",
           "Top-1 (%) on the ImageNet validation set (the test set); published: the baseline "
           "row's number in PAPER.md section 4; difference = top-1 - published.", "",
           "| row | method | sparsity | alpha | steps | published baseline | top-1 | difference |",
           "|---|---|---|---|---|---|---|---|"]
  for r in records:
    published = ("not published" if r["published_top1"] == ""
                 else f"{r['published_top1']:.2f}" + (f" ({r['baseline']})"
                                                      if r["baseline"] != r["row"] else ""))
    top1 = (f"{r['top1']:.2f}" + (" (smoke)" if r["status"] == SMOKE else "")
            if r["status"] in (OK, SMOKE) else r["status"])
    diff = f"{r['difference']:+.2f}" if r["difference"] != "" else "-"
    lines.append(f"| {r['row']} | {r['method']} | {100 * r['sparsity']:g}% | {r['alpha']:g} | "
                 f"{r['steps']} | {published} | {top1} | {diff} |")
  return "\n".join(lines) + "\n"


def write_table(out_dir: str, table: str, records: Sequence[dict[str, Any]], markdown: str
                ) -> tuple[str, str]:
  """Writes ``reproduce_<table>.md`` and ``.csv`` to ``out_dir``; returns their paths."""
  os.makedirs(out_dir, exist_ok=True)
  md = os.path.join(out_dir, f"reproduce_{table}.md")
  csv_path = os.path.join(out_dir, f"reproduce_{table}.csv")
  files.atomic_write(md, markdown)
  results.write_csv(csv_path, list(records))
  return md, csv_path


def collect_imagenet(module: ModuleType, rows: Sequence[str], runs_dir: str,
                     expected: Mapping[str, ml_collections.ConfigDict], out_dir: str,
                     title: str, log: Log, failed: Sequence[str] = (), smoke: bool = False
                     ) -> list[RowResult]:
  """Collects every row's final top-1 from ``runs_dir/ROW`` and writes the table
  (``reproduce_imagenet``; a ``smoke`` run's is ``reproduce_imagenet_smoke`` and its rows say
  "smoke", never "ok": its numbers mean nothing)."""
  found = []
  for row in rows:
    r = collect_row(row, os.path.join(runs_dir, row), expected[row])
    if row in failed and r.status != OK:
      r = RowResult(row, FAILED, detail=r.detail)
    if smoke and r.status == OK:
      r = dataclasses.replace(r, status=SMOKE)
    if r.status in (NO_FINAL, OTHER_CONFIG):
      log(f"{row}: {r.status}: {r.detail}")
    found.append(r)
  records = imagenet_records(found, module, expected)
  md, csv_path = write_table(out_dir, "imagenet_smoke" if smoke else "imagenet", records,
                             imagenet_markdown(records, title))
  done = sum(r.status in (OK, SMOKE) for r in found)
  log(f"wrote {md} and {csv_path}: {done} of {len(found)} rows have a final top-1")
  return found


class Stopped(Exception):
  """A SIGTERM reached this script while a command ran; the command got it too."""


def _run(cmd: Sequence[str], log: Log, name: str) -> int:
  """Runs ``cmd`` (the run ``name``) and returns its exit status. A SIGTERM to this process
  meanwhile is passed on to it (a training script saves a checkpoint and exits 0); once it
  has exited, :class:`Stopped` is raised, so no further command starts and no table is
  written from a half-done sweep."""
  log("$ " + shlex.join(cmd))
  proc = subprocess.Popen(list(cmd), cwd=REPO)
  signalled = threading.Event()

  def forward(signum: int, frame: Any) -> None:
    del frame
    signalled.set()
    proc.send_signal(signum)

  main_thread = threading.current_thread() is threading.main_thread()
  previous = signal.signal(signal.SIGTERM, forward) if main_thread else None
  try:
    rc = proc.wait()
  finally:
    if main_thread:
      signal.signal(signal.SIGTERM, previous)
  if signalled.is_set():
    log(f"preempted: {name} saved its checkpoint (status {rc}); no further run started; "
        "rerun the same command to resume")
    raise Stopped(name)
  return rc


def run_imagenet(args: argparse.Namespace, log: Log) -> int:
  module = load_imagenet_module()
  rows = parse_rows(args.rows, module.ROWS)
  runs_dir = os.path.join(args.runs, "imagenet")
  overrides = {r: (budget_overrides(module.get_config(r), args.steps) if args.steps else {})
               for r in module.ROWS}
  expected = {r: with_overrides(module.get_config(r), overrides[r]) for r in module.ROWS}
  if args.smoke:
    return run_smoke(module, rows, args.runs, args.out, log)
  if args.dry_run or args.launch:
    if not args.data_dir:
      log("# data: tfds's default data_dir; --data_dir=DIR adds --config.data.dir=DIR")
    first = expected[rows[0]]
    workers = int(first.data.workers)
    log(f"# input: data.workers={workers} (-1: one decode process per core the run may use, "
        f"minus 2; {imagenet.resolve_workers(workers)} on this host); global batch "
        f"{first.train.batch_size}: add --config.train.microbatches=K if it does not fit "
        "(scripts/bench_memory.py)")
    if args.launch:
      log("# One line per row. Multi-host: run the same line on every host of the slice or "
          "cluster; --config.train.distributed=True makes each call "
          "jax.distributed.initialize() (coordinator and process ids from the cluster's "
          "environment) and each host read its share of every global batch.")
    for row in rows:
      extra = dict(overrides[row])
      if args.launch:
        extra["train.distributed"] = True
      cmd = row_command(row, runs_dir, args.data_dir, extra)
      log(shlex.join(cmd) if args.launch else f"{row}: {shlex.join(cmd)}")
    return 0
  failed = []
  if args.rows:
    for row in rows:
      workdir = os.path.join(runs_dir, row)
      status = workdir_lib.status(workdir, expected[row])
      if status.state == workdir_lib.OTHER_CONFIG:
        log(f"{row}: other config: {status.detail}; not run (use another --runs)")
        continue
      rc = _run(row_command(row, runs_dir, args.data_dir, overrides[row], sys.executable), log,
                row)
      if rc:
        log(f"{row}: scripts/train.py exited with status {rc}")
        failed.append(row)
  collect_imagenet(module, module.ROWS, runs_dir, expected, args.out,
                   "ImageNet ResNet-50: sparse training, +Powerprop", log, failed)
  return 1 if failed else 0


def dense_layers_fit(config: ml_collections.ConfigDict) -> bool:
  """Whether ``sparsity.dense_layers`` of ``config``'s model hold no more weights than
  ``1 - sparsity.level`` of its prunable weights (what ERK needs to keep them dense)."""
  import jax  # pylint: disable=g-import-not-at-top
  from powerprop_jax import transform
  from powerprop_jax.experiment import models  # pylint: disable=g-import-not-at-top
  from powerprop_jax.sparsity import distributions  # pylint: disable=g-import-not-at-top
  size = int(config.data.image_size)
  x = np.zeros((1, size, size, 3), np.float32)
  model = models.model_from_config(config.model)
  params, _ = jax.eval_shape(lambda k: model.init(k, x, is_training=True),
                             jax.random.PRNGKey(0))
  shapes = transform.layer_shapes(params)
  dense = distributions.resolve_dense_layers(list(shapes), config.sparsity.dense_layers,
                                             models.creation_order(config.model, x))
  total = sum(int(np.prod(s)) for s in shapes.values())
  return sum(int(np.prod(shapes[d])) for d in dense) <= (1 - config.sparsity.level) * total


def smoke_config(module: ModuleType, row: str) -> ml_collections.ConfigDict:
  """Row ``row`` shrunk for the smoke run: a 10-layer ResNet on 32x32 mock images, 2 steps.

  The stand-in's 7x7x3x64 stem is 6% of its weights, so ERK at 95% cannot keep it dense
  (ResNet-50's is 0.04%): such a row's smoke run prunes every layer instead.
  """
  config = module.get_config(row)
  config = with_overrides(config, budget_overrides(config, SMOKE_STEPS))
  config = with_overrides(config, SMOKE_OVERRIDES)
  if config.sparsity.distribution == "erk" and config.sparsity.dense_layers:
    if not dense_layers_fit(config):
      config = with_overrides(config, {"sparsity.dense_layers": ""})
  return config


def run_smoke(module: ModuleType, rows: Sequence[str], runs: str, out_dir: str, log: Log,
              num_examples: int = SMOKE_EXAMPLES) -> int:
  """Every row end to end on ``tfds.testing.mock_data``, in process, then the table."""
  from powerprop_jax.experiment import train  # pylint: disable=g-import-not-at-top
  if not hasattr(train, "run_experiment"):
    raise ReproduceError("--smoke needs powerprop_jax.experiment.train.run_experiment, which this "
                         "checkout does not have yet")
  import jax  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  runs_dir = os.path.join(runs, "imagenet_smoke")
  expected = {r: smoke_config(module, r) for r in module.ROWS}
  failed = []
  # Two steps take far less time than optimising their programs: compile each row's
  # programs with most XLA optimisations off (about half the compile time on CPU).
  optimizing = not jax.config.values["jax_disable_most_optimizations"]
  jax.config.update("jax_disable_most_optimizations", True)
  try:
    with tfds.testing.mock_data(num_examples=num_examples):
      for row in rows:
        workdir = os.path.join(runs_dir, row)
        log(f"== smoke {row} in {workdir}")
        try:
          train.run_experiment(expected[row], workdir, log=log)
        except preemption.Preempted:   # saved and stopped: no further row, no table
          raise
        except Exception as e:  # pylint: disable=broad-except
          log(f"{row}: failed: {type(e).__name__}: {e}")
          failed.append(row)
  finally:
    jax.config.update("jax_disable_most_optimizations", not optimizing)
  collect_imagenet(module, rows, runs_dir, expected, out_dir,
                   f"ImageNet rows, smoke run ({SMOKE_STEPS} steps, resnet_tiny, mock data): "
                   "the numbers are meaningless", log, failed, smoke=True)
  return 1 if failed else 0


# ---------------------------------------------------------------------------------------------
# The small tables (README)


@dataclasses.dataclass(frozen=True)
class Sweep:
  """A README table: the script that runs it and how its results.json becomes a table."""
  script: str
  config: str
  data_dir: str             # default --data_dir, relative to the repository
  steps_field: str          # the config field --steps sets
  to_table: Callable[[list[dict[str, Any]]], tuple[list[dict[str, Any]], str]]


def parse_numbers(spec: str, kind: type, flag: str) -> tuple:
  """``"1,2"`` -> (1.0, 2.0) (``kind`` float) or (1, 2) (int); one-line error otherwise."""
  try:
    values = tuple(kind(x) for x in spec.split(",") if x.strip())
  except ValueError:
    raise ReproduceError(f"{flag} must be a comma list of {kind.__name__}s, got {spec!r}"
                         ) from None
  if not values:
    raise ReproduceError(f"{flag} must name at least one value, got {spec!r}")
  return values


def cell(mean: float, std: float, n: int, digits: int = 4) -> str:
  """``mean ± std`` (std over seeds; the mean alone for one seed)."""
  return f"{mean:.{digits}f}" if n == 1 else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _wide(records: Sequence[dict[str, Any]], row_key: Callable[[dict], tuple],
          row_label: Callable[[tuple], list[str]], row_header: list[str]) -> str:
  """Markdown: one line per row key, one column per alpha, ``mean ± std`` cells."""
  alphas = sorted({r["alpha"] for r in records})
  cells: dict[tuple, dict[float, str]] = defaultdict(dict)
  for r in records:
    cells[row_key(r)][r["alpha"]] = cell(r["mean"], r["std"], r["n"])
  lines = ["| " + " | ".join(row_header + [f"alpha {a:g}" for a in alphas]) + " |",
           "|" + "---|" * (len(row_header) + len(alphas))]
  for key in sorted(cells):
    lines.append("| " + " | ".join(row_label(key) + [cells[key].get(a, "-") for a in alphas])
                 + " |")
  return "\n".join(lines) + "\n"


def oneshot_table(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
  """prune_eval rows -> (mean ± std of test accuracy per (keep fraction, alpha), markdown)."""
  stats = results.mean_by(rows, ("keep_fraction", "alpha"), "accuracy")
  kept = results.mean_by(rows, ("keep_fraction",), "weights_remaining")
  records = [{"keep_fraction": k, "weights_remaining": kept[(k,)][0], "alpha": a,
              "mean": m, "std": s, "n": n} for (k, a), (m, s, n) in sorted(stats.items())]
  md = ("Test accuracy after one-shot pruning (no fine-tuning), mean ± std over seeds.\n\n"
        + _wide(records, lambda r: (r["keep_fraction"], r["weights_remaining"]),
                lambda k: [f"{100 * k[1]:.2f}%"], ["weights kept"]))
  return records, md


def sparse_table(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
  """sparse_mnist rows -> mean ± std of test accuracy per (method, sparsity, alpha)."""
  stats = results.mean_by(rows, ("method", "sparsity", "alpha"), "test_accuracy")
  records = [{"method": me, "sparsity": sp, "alpha": a, "mean": m, "std": s, "n": n}
             for (me, sp, a), (m, s, n) in sorted(stats.items())]
  md = ("Test accuracy of the final sparse network, mean ± std over seeds.\n\n"
        + _wide(records, lambda r: (r["method"], r["sparsity"]),
                lambda k: [k[0] if k[0] != "none" else "dense", f"{100 * k[1]:g}%"],
                ["method", "sparsity"]))
  return records, md


def continual_table(runs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
  """continual runs -> average accuracy and total capacity per (method, alpha)."""
  acc = results.mean_by(runs, ("method", "alpha"), "average_accuracy")
  cap = results.mean_by(runs, ("method", "alpha"), "total_capacity")
  records = [{"method": me, "alpha": a, "average_accuracy_mean": m, "average_accuracy_std": s,
              "total_capacity_mean": cap[(me, a)][0], "total_capacity_std": cap[(me, a)][1],
              "n": n} for (me, a), (m, s, n) in sorted(acc.items())]
  lines = ["Final average accuracy over tasks and total capacity used, mean ± std over seeds.",
           "", "| method | alpha | average accuracy | total capacity | seeds |",
           "|---|---|---|---|---|"]
  for r in records:
    lines.append(f"| {r['method']} | {r['alpha']:g} | "
                 f"{cell(r['average_accuracy_mean'], r['average_accuracy_std'], r['n'])} | "
                 f"{cell(r['total_capacity_mean'], r['total_capacity_std'], r['n'])} | "
                 f"{r['n']} |")
  return records, "\n".join(lines) + "\n"


SWEEPS: dict[str, Sweep] = {
    "mnist": Sweep("scripts/prune_eval.py", "configs/mnist_oneshot.py", "../shared/data/mnist",
                   "train.steps", oneshot_table),
    "mnist_sparse": Sweep("scripts/sparse_mnist.py", "configs/mnist_sparse.py",
                          "../shared/data/mnist", "train.steps", sparse_table),
    "cifar": Sweep("scripts/prune_eval.py", "configs/cifar10_oneshot.py", "../shared/data",
                   "train.steps", oneshot_table),
    "continual": Sweep("scripts/continual.py", "configs/continual_pmnist.py",
                       "../shared/data/mnist", "continual.steps_per_task", continual_table),
}
TITLES = {"mnist": "MNIST LeNet-300-100 one-shot pruning (Figure 1a)",
          "mnist_sparse": "MNIST LeNet-300-100 sparse training",
          "cifar": "CIFAR-10 one-shot pruning",
          "continual": "Permuted MNIST continual learning"}


def sweep_command(table: str, workdir: str, data_dir: str, steps: int = 0,
                  alphas: tuple = (), seeds: tuple = (), python: str = "python") -> list[str]:
  """The command line of a small table's script."""
  sweep = SWEEPS[table]
  overrides: dict[str, Any] = {}
  if steps:
    overrides[sweep.steps_field] = int(steps)
  if alphas:
    overrides["sweep.alphas"] = alphas
  if seeds:
    overrides["sweep.seeds"] = seeds
  return ([python, sweep.script, f"--config={sweep.config}", f"--config.data.dir={data_dir}",
           f"--workdir={workdir}"] + override_flags(overrides))


def write_sweep_table(table: str, workdir: str, out_dir: str, log: Log) -> tuple[str, str]:
  """Reads ``workdir/results.json`` and writes ``reproduce_<table>.md/.csv``."""
  path = os.path.join(workdir, "results.json")
  if not os.path.exists(path):
    raise ReproduceError(f"{path} does not exist: the {table} sweep wrote no results")
  with open(path) as f:
    rows = json.load(f)
  records, md = SWEEPS[table].to_table(rows)
  md = f"# {TITLES[table]}\n\nFrom `{path}`.\n\n{md}"
  md_path, csv_path = write_table(out_dir, table, records, md)
  log(f"wrote {md_path} and {csv_path} ({len(records)} cells)")
  return md_path, csv_path


def run_sweep(args: argparse.Namespace, log: Log) -> int:
  if args.rows or args.smoke or args.launch:
    raise ReproduceError(f"--rows, --smoke and --launch are for --table imagenet, not "
                         f"{args.table}")
  alphas = parse_numbers(args.alphas, float, "--alphas") if args.alphas else ()
  seeds = parse_numbers(args.seeds, int, "--seeds") if args.seeds else ()
  data_dir = args.data_dir or SWEEPS[args.table].data_dir
  workdir = os.path.join(args.runs, args.table)
  cmd = sweep_command(args.table, workdir, data_dir, args.steps, alphas, seeds,
                      "python" if args.dry_run else sys.executable)
  if args.dry_run:
    log(f"{args.table}: {shlex.join(cmd)}")
    return 0
  rc = _run(cmd, log, args.table)
  if rc:
    log(f"{args.table}: {SWEEPS[args.table].script} exited with status {rc}")
    return 1
  write_sweep_table(args.table, workdir, args.out, log)
  return 0


# ---------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="scripts/reproduce.py", description=__doc__.split("\n\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--table", required=True, choices=TABLES)
  p.add_argument("--out", default="results/reproduce",
                 help="where reproduce_<table>.md and .csv go")
  p.add_argument("--runs", default="runs/reproduce",
                 help="run folders: RUNS/imagenet/ROW, RUNS/<table>")
  p.add_argument("--data_dir", default="",
                 help="data directory (mnist tables: ../shared/data/mnist, cifar: "
                      "../shared/data, imagenet: tfds's default data_dir)")
  p.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true",
                 help="print every row with its command; run nothing")
  p.add_argument("--rows", default="", help="imagenet: comma list of rows to run, in order")
  p.add_argument("--launch", action="store_true",
                 help="imagenet: print one launch line per row for a cluster")
  p.add_argument("--smoke", action="store_true",
                 help="imagenet: every row for a few steps on mock data, in process")
  p.add_argument("--steps", type=int, default=0,
                 help="shorten the budget to N steps (continual: steps per task)")
  p.add_argument("--alphas", default="", help="small tables: comma list, e.g. 1,2")
  p.add_argument("--seeds", default="", help="small tables: comma list, e.g. 0,1")
  return p


def main(argv: Sequence[str], log: Log = print) -> int:
  """Runs the command line ``argv`` (without the program name); returns the exit status."""
  args = build_parser().parse_args(list(argv))
  try:
    if not (args.dry_run or args.launch):   # what this run reads and writes: reachable?
      for flag, where in (("--runs", args.runs), ("--out", args.out)):
        files.check_reachable(where, flag)
    if args.table == "imagenet":
      if args.alphas or args.seeds:
        raise ReproduceError("--alphas and --seeds are for the small tables; the ImageNet "
                             "rows fix alpha (the _pp rows use POWERPROP_ALPHA)")
      return run_imagenet(args, log)
    return run_sweep(args, log)
  except checks.UserError as e:   # ReproduceError and the harness's one-line errors
    print(f"error: {e}", file=sys.stderr)
    return 2
  except (preemption.Preempted, Stopped):   # saved and stopped (already logged): rerun
    return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
