"""The Webcam tab: live frames from the browser's camera -> the frame as the run's task shows it (tasks.TASK_TABS:
classification draws the top class and confidence, segmentation overlays the mask) and the scores as bars.
Nothing is written to disk: frames arrive as data URLs (decoded in memory) and the annotated frame goes back inline
as a JPEG data URL in HTML, not as a file in Gradio's cache. /webcam_frame (frame, model) is the event's API name."""
from __future__ import annotations

import base64
import io

import gradio as gr
import numpy as np
from PIL import Image

from ...utils import UserError
from ..infer import AppRun
from .image import run_by_name
from .tasks import tab_for

STREAM_EVERY_S = 0.25       # ~4 frames a second: a small CPU model keeps up, and the browser is not flooded
TIME_LIMIT_S = 600          # one stream runs at most 10 minutes, so a forgotten tab does not hold the CPU forever
JPEG_QUALITY = 85


def frame_html(rgb: np.ndarray) -> str:
    """The frame as an inline <img> (a JPEG data URL): shown by the browser, never saved on the server."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(buf, format="JPEG", quality=JPEG_QUALITY)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img src="data:image/jpeg;base64,{data}" alt="annotated frame" style="max-width:100%">'


def make_frame_fn(runs: list[AppRun]):
    """The streaming handler: (RGB frame, model name) -> (annotated frame as HTML, {class: score} for the bars:
    the top classes, or each class's share of the pixels)."""

    def on_frame(frame: np.ndarray | None, model: str | None):
        if frame is None:
            return "", None
        app_run = run_by_name(runs, model)
        try:
            shown, scores = tab_for(app_run.task).frame_view(app_run, frame)
        except UserError as e:               # a frame the decoder rejects (should not happen): keep streaming
            gr.Warning(str(e))
            return frame_html(frame), None
        return frame_html(shown), scores

    return on_frame


def build_webcam_tab(runs: list[AppRun], picker: gr.Dropdown) -> None:
    """Add the Webcam tab to the open Blocks; ``picker`` is the shared model dropdown."""
    with gr.Tab("Webcam", id="webcam"):
        gr.Markdown("Allow camera access, then press record: about four frames a second are classified (or "
                    "segmented) with the same preprocessing as the evaluation. Frames are processed in memory; "
                    "nothing is stored (right-click the annotated frame to save it on your side).")
        with gr.Row():
            cam = gr.Image(sources=["webcam"], streaming=True, type="numpy", label="Camera", elem_id="webcam-input")
            out = gr.HTML(label="Annotated frame", elem_id="webcam-output")
        label = gr.Label(num_top_classes=3, label="Top classes (or largest areas)", elem_id="webcam-label")
        cam.stream(make_frame_fn(runs), inputs=[cam, picker], outputs=[out, label], stream_every=STREAM_EVERY_S,
                   time_limit=TIME_LIMIT_S, concurrency_limit=2, api_name="webcam_frame")
