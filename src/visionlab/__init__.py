"""visionlab: an offline-first computer-vision lab. Public API: train, evaluate, predict, load_run, report."""
import os as _os

# Offline first: libraries we may load never phone home unless the user asks (design notes, section 6).
for _k, _v in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
               "DO_NOT_TRACK": "1", "MPLBACKEND": "Agg"}.items():
    _os.environ.setdefault(_k, _v)

__version__ = "0.1.0"

from .api import evaluate, load_run, predict, report, train  # noqa: E402
from .config import Config, load_config  # noqa: E402

__all__ = ["train", "evaluate", "predict", "load_run", "report", "Config", "load_config", "__version__"]
