"""Any slice size: a run on 16 or 32 devices (2 microbatches per step) trains and evaluates
with an evaluation batch that does not divide over them (padded, masked), and its accuracy
equals one device's."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKER = r'''
import json, sys
import jax
from powerprop_jax.experiment import config as config_lib, parallel, train
from powerprop_jax.experiment.data import base, synthetic
workdir = sys.argv[1]
ds = synthetic.prototype_digits(128, 150, seed=0, dim=32)
c = config_lib.base()
c.train.update({"steps": 2, "batch_size": 64, "eval_batch_size": 100, "chunk_steps": 1,
                "microbatches": 2, "log_every": 1, "eval_every": 2,
                "checkpoint_every": 2})
c.sparsity.update({"method": "rigl", "level": 0.5})
train.check_config(c, num_train=128, num_devices=jax.device_count())
splits = base.DataSplits(ds["train"], ds["validation"],
                         lambda b: base.padded_batches(ds["test"], b), num_train=128,
                         sample_input=ds["train"].images[:1])
state, exp = train.train_and_evaluate(c, workdir, splits, log=lambda m: None)
last = [json.loads(l) for l in open(workdir + "/metrics.jsonl")][-1]
one = train.make_eval_fn(exp.model, exp.reparam, 100, parallel.make_mesh(1))
host = jax.device_get(state)
masks = train.forward_masks(host.opt_state)
print(json.dumps({"devices": jax.device_count(), "record": last,
                  "one_device": [one(host.params, host.net_state, ds[k], masks)
                                 for k in ("validation", "test")]}))
'''


@pytest.mark.slow
@pytest.mark.parametrize("devices", [16, 32])
def test_trains_and_evaluates_on_any_slice(tmp_path, devices):
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
  out = subprocess.run([sys.executable, "-c", WORKER, str(tmp_path)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  got = json.loads(out.stdout.strip().splitlines()[-1])
  assert got["devices"] == devices
  record = got["record"]
  assert record["step"] == 2
  assert [record["validation_accuracy"], record["test_accuracy"]] == got["one_device"]
  for acc in got["one_device"]:   # every one of the 150 examples counted once
    assert abs(acc * 150 - round(acc * 150)) < 1e-9
