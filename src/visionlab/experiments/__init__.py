"""Many runs and their human views: reports (and, beside them, seeds, sweeps and comparisons)."""
from visionlab.experiments.report import write_report

__all__ = ["write_report"]
