"""The command line: `visionlab MODE [CONFIG.yaml] [key=value ...]`. One module per group of modes; `main.py` holds
the MODES table and the error handling. Faces only: parse, call the public API, show results."""
from .main import MODES, USAGE, main

__all__ = ["MODES", "USAGE", "main"]
