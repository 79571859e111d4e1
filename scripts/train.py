"""Trains one model from a config; resumes from the workdir's latest checkpoint.

  python scripts/train.py --config=configs/mnist_oneshot.py --config.alpha=4 \
      --config.data.dir=../shared/data/mnist --workdir=runs/mnist_a4

Writes ``metrics.jsonl`` (one JSON object per chunk of steps), ``config.json`` and orbax
checkpoints to the workdir.
"""

from absl import app
from absl import flags

from powerprop_jax import cli, data, results, train

cli.define_flags()
FLAGS = flags.FLAGS


def main(argv):
  del argv
  config = FLAGS.config

  def run():
    datasets = data.load_datasets(config.data)
    results.write_json(f"{FLAGS.workdir}/config.json", config.to_dict())
    train.train_and_evaluate(config, FLAGS.workdir, datasets)

  cli.run(run)


if __name__ == "__main__":
  app.run(main)
