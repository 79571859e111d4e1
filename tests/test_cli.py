"""The scripts' plumbing (experiment/cli.py): one line for the user's errors, a traceback for
bugs, misspelt --config fields found with a suggestion, and --help that lists the flags."""

import os
import subprocess
import sys

import pytest

from powerprop_jax import checks
from powerprop_jax.experiment import cli, preemption

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "mnist_oneshot.py")
IMAGENET = os.path.join(ROOT, "configs", "imagenet_resnet50.py")


@pytest.mark.parametrize("argv,expect", [
    ([f"--config={CONFIG}", "--config.train.stepz=5"], 'did you mean "train.steps"'),
    ([f"--config={CONFIG}", "--config.optimiser.name=sgd"], 'did you mean "optimizer'),
    (["--config", CONFIG, "--config.alpah=2"], 'did you mean "alpha"'),
    ([f"--config={IMAGENET}:topkast90", "--config.sparsity.levl=0.5"],
     'did you mean "sparsity.level"'),
])
def test_unknown_override_is_named_with_a_suggestion(argv, expect):
  line = cli.unknown_override(argv)
  assert line.startswith("error: --config.") and expect in line


def test_known_overrides_pass():
  assert cli.unknown_override([f"--config={CONFIG}", "--config.train.steps=5",
                               "--config.sparsity=x", "--workdir=w"]) is None
  assert cli.unknown_override(["--workdir=w"]) is None


def test_run_prints_user_errors_in_one_line_and_keeps_tracebacks_of_bugs(capsys):
  def bad_input():
    raise checks.ConfigError("alpha must be >= 1, got 0.5")

  with pytest.raises(SystemExit) as exit_info:
    cli.run(bad_input)
  assert exit_info.value.code == 1
  assert capsys.readouterr().err == "error: alpha must be >= 1, got 0.5\n"

  def bug():
    raise ValueError("an internal inconsistency")

  with pytest.raises(ValueError, match="internal"):
    cli.run(bug)


def test_run_exits_0_on_a_preemption(capsys):
  """Training saved a checkpoint and stopped (already logged): the scheduler requeues it."""
  def preempted():
    raise preemption.Preempted(20, 60, "runs/x")

  with pytest.raises(SystemExit) as exit_info:
    cli.run(preempted)
  assert exit_info.value.code == 0 and capsys.readouterr().err == ""


@pytest.mark.parametrize("spec,expect", [("1/2", (1, 2)), ("0/1", (0, 1))])
def test_parse_shard(spec, expect):
  assert cli.parse_shard(spec) == expect


@pytest.mark.parametrize("spec", ["2/2", "a/b", "1", "-1/2"])
def test_parse_shard_refuses(spec):
  with pytest.raises(checks.ConfigError, match="--shard"):
    cli.parse_shard(spec)


@pytest.mark.parametrize("script,flag", [("scripts/train.py", "--workdir"),
                                         ("scripts/study_sparse.py", "--shard"),
                                         ("scripts/export.py", "--keep_fraction")])
def test_help_lists_the_scripts_flags(script, flag):
  out = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
  # absl prints the script's own flags (cli's are attributed to it) and exits with status 1.
  # (``--flag:`` is how absl lists a flag; a docstring's examples say ``--flag=``.)
  assert f"{flag}:" in out.stdout and "--workdir:" in out.stdout, out.stdout[-2000:]
