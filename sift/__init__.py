"""sift: test-time fine-tuning data selection (SIFT) and its pipeline, as a pure library.

``import sift`` never imports Prefect, MLflow or Optuna, and imports torch only when selection first
runs (so the CLI's ``--help``, which validates method names against ``METHODS``, stays fast).
"""

from sift.methods import METHODS, Method, register_method
from sift.select import Selection, posterior_variance, select, select_batch

__all__ = ["METHODS", "Method", "Selection", "posterior_variance", "register_method", "select", "select_batch"]
