"""Evaluation: test loss and accuracy of a model, or a model with an adapter, on held-out records."""
