"""Experiments: does a selection help? The config file (config), the grid of cells (runner), its results
(results) and plot (plots)."""

from gradsift.experiment.config import ExperimentConfig, load_experiment
from gradsift.experiment.results import summarize
from gradsift.experiment.runner import Experiment, run_experiment

__all__ = ["Experiment", "ExperimentConfig", "load_experiment", "run_experiment", "summarize"]
