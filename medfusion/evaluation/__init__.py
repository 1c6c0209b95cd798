"""Evaluation: one classifier driver, the evaluators run during training, batch scoring and draw analysis."""
