"""Harness, metrics, statistics, plots and report. Imports l2o.optimizers, l2o.meta, l2o.io."""
