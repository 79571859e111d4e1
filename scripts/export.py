"""Exports a finished run's pruned weights to one compact file (``powerprop_jax.export``).

  python scripts/export.py --workdir=runs/mnist_rigl --output=mnist_rigl.ppjx
  python scripts/export.py --workdir=runs/mnist_oneshot/alpha4_seed0 --keep_fraction=0.05 \
      --output=lenet_a4_5pct.ppjx [--bfloat16] [--structure=2:4]

The file holds the effective weights w = masks * powerprop(v) (no alpha needed to use them),
each sparse leaf as its non-zeros and their positions, and the run's config as metadata.
Prints the dense and compressed sizes and each layer's sparsity; ``load_sparse`` reads it.
"""

from __future__ import annotations

from absl import flags

from powerprop_jax import export
from powerprop_jax.experiment import cli
from powerprop_jax.experiment import export as run_export

flags.DEFINE_string("workdir", None, "A finished run's workdir (scripts/train.py, a sweep cell).")
flags.DEFINE_string("output", None, "The file to write.")
flags.DEFINE_float("keep_fraction", None, "Dense runs: prune one-shot to this keep fraction "
                   "as the pruning curves do (layerwise, output layer x2 by default).")
flags.DEFINE_integer("task", None, "Continual streams: export the weights this task uses.")
flags.DEFINE_bool("bfloat16", False, "Store the values as bfloat16 (half the bytes).")
flags.DEFINE_string("structure", "", "N:M (e.g. 2:4): store N:M leaves in the N:M layout.")
flags.mark_flags_as_required(["workdir", "output"])
FLAGS = flags.FLAGS


def summary_lines(summary: dict, step: int) -> list[str]:
  """The printed report: sizes, then one line per layer."""
  mb = lambda b: f"{b / 2**20:.3f} MiB"  # noqa: E731
  lines = [f"{summary['path']}: step {step}, dense {mb(summary['dense_bytes'])}, file "
           f"{mb(summary['file_bytes'])} ({summary['file_bytes'] / summary['dense_bytes']:.1%}"
           f" of dense), sparsity {summary['sparsity']:.2%}"]
  for name, layer in summary["layers"].items():
    lines.append(f"  {name:40s} {str(tuple(layer['shape'])):18s} {layer['encoding']:8s} "
                 f"sparsity {layer['sparsity']:.2%}  {layer['bytes']} bytes")
  return lines


def main(argv):
  del argv

  def run():
    loaded = run_export.load_run(FLAGS.workdir, FLAGS.keep_fraction, FLAGS.task)
    summary = export.save_sparse(
        FLAGS.output, loaded.params, values_dtype="bfloat16" if FLAGS.bfloat16 else None,
        structure=FLAGS.structure,
        metadata={"config": run_export.config_json(loaded.config), "step": loaded.step,
                  "workdir": FLAGS.workdir, "keep_fraction": FLAGS.keep_fraction,
                  "task": FLAGS.task})
    print("\n".join(summary_lines(summary, loaded.step)))

  cli.run(run)


if __name__ == "__main__":
  cli.run_app(main)
