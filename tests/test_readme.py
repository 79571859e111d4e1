"""The README's Python snippets run as written, and its commands match .ci/run."""

import os
import re

import jax
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_python_snippets_run():
  text = open(os.path.join(ROOT, "README.md")).read()
  blocks = re.findall(r"```python\n(.*?)```", text, re.S)
  assert len(blocks) >= 2
  namespace = {}
  exec("\n".join(blocks), namespace)  # pylint: disable=exec-used
  masks, pruned = namespace["masks"], namespace["pruned"]
  kept = sum(int(m.sum()) for m, p in zip(jax.tree_util.tree_leaves(masks),
                                          jax.tree_util.tree_leaves(pruned)) if p.ndim == 2)
  assert kept == round(0.1 * (784 * 300 + 300 * 100 + 100 * 10))
  assert np.isfinite(np.asarray(namespace["logits"])).all()
  # Flax linen: 90% of the kernels pruned and still exactly zero after an update.
  kernels = [(m, p) for m, p in zip(jax.tree_util.tree_leaves(namespace["linen_masks"]),
                                    jax.tree_util.tree_leaves(namespace["variables"]))
             if p.ndim == 2]
  assert sum(int(m.sum()) for m, _ in kernels) == round(0.1 * (784 * 300 + 300 * 10))
  assert all(np.all(np.asarray(p)[~np.asarray(m)] == 0) for m, p in kernels)
  # Flax NNX with RigL: the model's own kernels are sparse at the ERK counts after a step.
  assert np.isfinite(float(namespace["nnx_loss"]))
  model = namespace["nnx_model"]
  kept = sum(int(np.count_nonzero(np.asarray(k))) for k in
             (model.hidden.kernel[...], model.out.kernel[...]))
  assert kept == round(0.1 * (784 * 300 + 300 * 10))


def test_ci_runs_the_readme_test_command():
  readme = open(os.path.join(ROOT, "README.md")).read()
  ci = open(os.path.join(ROOT, ".ci", "run")).read()
  assert "python -m pytest tests -q" in readme
  assert "python -m pytest tests -q" in ci
  assert 'pip install -e ".[test]"' in readme and 'pip install -q -e ".[test]"' in ci
