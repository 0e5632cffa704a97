"""Experiment tooling for DRRL-v0: rollouts, evaluation and the ``drrl`` command line."""
