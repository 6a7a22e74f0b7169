"""Held-out hyperparameter search over allocation methods (``owl tune``)."""
