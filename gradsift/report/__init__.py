"""Reports of a selection or an experiment: on the console and as one self-contained HTML page."""

from gradsift.report.console import print_selection
from gradsift.report.html import render_report, write_report

__all__ = ["print_selection", "render_report", "write_report"]
