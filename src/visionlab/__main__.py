"""`python -m visionlab ...` is the CLI (and the entry point for torchrun)."""
from .cli import main

raise SystemExit(main())
