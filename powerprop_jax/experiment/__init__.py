"""The experiment harness: what runs the paper's experiments from config files.

config (the base ConfigDict), train (the one training driver), continual (the continual
driver), export (a finished run's model and pruned weights), data, models, checkpoint, workdir
(a run's files), metrics, files (the path layer and atomic writes), sweep, results, parallel,
preemption, flops (model FLOPs and device utilisation), cli. It imports the library
(``powerprop_jax``); the library never imports it.
"""
