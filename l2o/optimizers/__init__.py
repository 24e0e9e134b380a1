"""Learned optimizers, their registry and file format. Imports tasks, baselines, l2o.io."""
