"""Reproduces a table: the paper's ImageNet rows or one of the README's small tables.

  python scripts/reproduce.py --table imagenet --dry-run          # every row, its command
  python scripts/reproduce.py --table imagenet --rows topkast90,topkast90_pp \
      --data_dir=/data/tfds                                       # run rows, then the table
  python scripts/reproduce.py --table imagenet --launch           # one cluster line per row
  python scripts/reproduce.py --table imagenet --smoke            # every row, 2 steps, mock data
  python scripts/reproduce.py --table mnist --steps 300 --alphas 1,2   # or mnist_sparse,
                                                                 # cifar, continual

Writes ``reproduce_<table>.md`` and ``.csv`` to ``--out`` (default results/reproduce). Exit
status 2 for bad input (an unknown row), 1 when a run failed. Logic: powerprop_jax/reproduce.py.
"""

from __future__ import annotations

import sys

from powerprop_jax import reproduce

if __name__ == "__main__":
  sys.exit(reproduce.main(sys.argv[1:]))
