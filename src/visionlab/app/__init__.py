"""The web app (L5): run directories in, a Gradio page out (main.py builds and launches it; tabs/ holds the tabs)."""
import os as _os

# Before gradio is imported anywhere: no usage analytics, no version check against the network (design notes, 6).
_os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
_os.environ.setdefault("HF_HUB_OFFLINE", "1")
