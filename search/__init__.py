"""Symbolic update-rule search and hyperparameter search (built on `tasks` and `baselines`)."""
