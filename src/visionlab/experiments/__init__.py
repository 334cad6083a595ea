"""Many runs and their human views: reports, seeds and comparisons (ablations with statistics)."""
from visionlab.experiments.report import render_any, write_report

__all__ = ["render_any", "write_report"]
