"""pytest set-up shared by all tests."""

import os
import tempfile

from absl import flags

# absltest helpers (e.g. create_tempdir in chex.TestCase) read absl flags; pytest does not
# parse them, so mark them parsed with their defaults.
flags.FLAGS.mark_as_parsed()

# One XLA compilation cache for the whole session, subprocesses included (set before jax is
# imported): many tests build the same train step again, and compiling dominates their time.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      tempfile.mkdtemp(prefix="powerprop-jax-cache-"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
