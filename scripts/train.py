"""Trains one model from a config; resumes from the workdir's newest intact checkpoint.

  python scripts/train.py --config=configs/mnist_oneshot.py --config.alpha=4 \
      --config.data.dir=../shared/data/mnist --workdir=runs/mnist_a4

Writes ``metrics.jsonl`` (one JSON object per log, eval or checkpoint step), TensorBoard
event files (``tensorboard/``), ``config.json`` and orbax checkpoints to the workdir; only
process 0 writes on a multi-host run (``--config.train.distributed=True`` on every host).
"""

import os

from absl import flags
import jax

from powerprop_jax.experiment import cli, results, train

cli.define_flags()
FLAGS = flags.FLAGS


def main(argv):
  del argv
  config = FLAGS.config

  def run():
    final = train.run_experiment(config, FLAGS.workdir,
                                 allow_changed_config=FLAGS.allow_changed_config,
                                 allow_extend=FLAGS.allow_extend)
    if jax.process_index() == 0:
      results.write_json(os.path.join(FLAGS.workdir, "config.json"), config.to_dict())
      print(f"done: {final}")

  cli.run(run)


if __name__ == "__main__":
  cli.run_app(main)
