"""Learned optimizers, meta-training, evaluation, reports and the `l2o` command line."""
