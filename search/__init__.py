"""Symbolic update-rule search and hyperparameter search (built on `tasks` and `baselines`)."""

from search.rule_file import load_rule

__all__ = ["load_rule"]
