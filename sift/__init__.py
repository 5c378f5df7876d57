"""sift: test-time fine-tuning data selection (SIFT) and its pipeline, as a pure library.

``import sift`` never imports Prefect, MLflow or Optuna.
"""

from sift.select import METHODS, Selection, posterior_variance, select, select_batch

__all__ = ["METHODS", "Selection", "posterior_variance", "select", "select_batch"]
