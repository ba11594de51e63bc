"""gradsift: targeted instruction-data selection with LESS gradient features."""

__version__ = "0.1.0"
