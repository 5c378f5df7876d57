"""sift: test-time fine-tuning data selection (SIFT) and its pipeline, as a pure library.

``import sift`` never imports Prefect, MLflow or Optuna.
"""
