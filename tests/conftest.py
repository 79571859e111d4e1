"""pytest set-up shared by all tests."""

from absl import flags

# absltest helpers (e.g. create_tempdir in chex.TestCase) read absl flags; pytest does not
# parse them, so mark them parsed with their defaults.
flags.FLAGS.mark_as_parsed()
