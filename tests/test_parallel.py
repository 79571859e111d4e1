"""Data parallelism: a small ResNet sharded over 4 (forced host) devices matches 1 device.

Runs in a subprocess because the device count is fixed when JAX starts
(XLA_FLAGS=--xla_force_host_platform_device_count=4).
"""

import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent("""
    import sys
    import jax, ml_collections, numpy as np
    from powerprop_jax.experiment import train
    from powerprop_jax.experiment.data import Dataset
    from powerprop_jax.experiment import config as config_lib
    assert jax.device_count() == 4, jax.devices()

    def config(num_devices):
      c = config_lib.base()
      c.seed, c.alpha = 0, 2.0
      c.model.update({"name": "resnet_tiny", "num_classes": 10})
      c.train.update({
          "steps": 3, "batch_size": 8, "chunk_steps": 1, "log_every": 0, "eval_every": 0,
          "checkpoint_every": 0, "label_smoothing": 0.1, "augment": "crop_flip",
          "unroll": True, "num_devices": num_devices})
      c.optimizer.update({"learning_rate": 0.1, "momentum": 0.9, "nesterov": True,
                          "weight_decay": 1e-4})
      return c

    rng = np.random.default_rng(0)
    d = Dataset(rng.normal(size=(32, 32, 32, 3)).astype(np.float32),
                rng.integers(0, 10, 32).astype(np.int32))
    data = {"train": d, "validation": d}
    out = {}
    for n in (1, 4):
      state, _ = train.train_and_evaluate(config(n), sys.argv[1] + f"/{n}", data,
                                          log=lambda m: None)
      leaf = jax.tree_util.tree_leaves(state.params)[0]
      assert len(leaf.sharding.device_set) == n, (n, leaf.sharding)
      out[n] = jax.device_get((state.params, state.net_state, state.opt_state))
    for a, b in zip(jax.tree_util.tree_leaves(out[1]), jax.tree_util.tree_leaves(out[4])):
      np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
    moved = [np.abs(a - b).max() for a, b in zip(
        jax.tree_util.tree_leaves(out[4][0]), jax.tree_util.tree_leaves(
            train.build_experiment(config(4), d.images[:1]).init_state.params))]
    assert max(moved) > 1e-3, moved
    bad = config(4)
    bad.train.batch_size = 6
    try:
      train.train_and_evaluate(bad, sys.argv[1] + "/bad", data, log=lambda m: None)
    except ValueError as e:
      assert "multiple of 4 = 4 devices" in str(e), e
    else:
      raise AssertionError("batch 6 over 4 devices was accepted")
    print("OK")
""")


@pytest.mark.slow
def test_four_devices_match_one_device(tmp_path):
  """3 steps of ResNet-10 + powerprop (alpha 2, Nesterov momentum, crop+flip), global batch
  8: params, batch-norm state and momentum agree across 1 and 4 devices."""
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
         "JAX_PLATFORMS": "cpu"}
  out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]


def test_too_many_devices_is_clear():
  from powerprop_jax.experiment import parallel  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match="num_devices must be in"):
    parallel.make_mesh(99)
