"""The Image tab of classification runs: upload a picture (or click a test-split example), get the top classes, the
class's card, and prediction files to download. API name: /classify (file, model) for gradio_client and the HTTP API.
Also the webcam's classification frame: the top class drawn on it."""
from __future__ import annotations

from pathlib import Path

import gradio as gr
import numpy as np

from ...data.decode import IMAGE_EXTS
from ...utils import UserError
from ..guide import card_markdown
from ..infer import (AppRun, Downloads, annotate, card_with_example, classify_frame, classify_image,
                     display_image, top_dict)
from ..upload import TooLarge, open_upload

TOPK = 10           # probabilities kept in the downloads; the bar chart shows the first five
LOW_CONFIDENCE = 0.5    # below this the status line points at the runner-up too


def run_by_name(runs: list[AppRun], name: str | None) -> AppRun:
    """The run chosen in the model picker (the first one when none is chosen)."""
    return next((r for r in runs if r.name == name), runs[0])


def upload_path(upload: dict | str | None) -> tuple[str | None, str]:
    """(path, file name) of the File component's raw value (its FileData dict, or a plain path)."""
    if isinstance(upload, dict):
        path = upload.get("path")
        return path, upload.get("orig_name") or Path(path or "").name
    return upload, Path(upload or "").name


NO_UPLOAD = "Upload an image (JPEG, PNG, WebP, ...) or click an example."


def refuse(verb: str, name: str, err: UserError) -> str:
    """Warn about a bad upload (empty, truncated, not an image, over the pixel limit) and return the status line; the
    handler returns it instead of raising, so the page and the server carry on."""
    hint = "" if isinstance(err, TooLarge) else " Upload a JPEG, PNG or other image file."
    msg = f"Cannot {verb} {name}: {err}.{hint}"
    gr.Warning(msg)
    return f"**{msg}**"


def make_classify(runs: list[AppRun], downloads: Downloads):
    """The event handler: (upload, model name) -> (label, annotated image, card, status, download files).

    A bad upload (empty, truncated, not an image, over the pixel limit) shows a warning and a status message; nothing
    is raised, so the page and the server carry on."""

    def classify(upload: dict | str | None, model: str | None):
        path, name = upload_path(upload)
        if not path:
            return None, None, "", NO_UPLOAD, None
        app_run = run_by_name(runs, model)
        try:
            im = open_upload(path)               # decoded once; the error says why (empty, too large, ...)
            top = classify_image(app_run, im, TOPK)
            picture = display_image(im)
        except UserError as e:
            return None, None, "", refuse("classify", name, e), None
        shown = annotate(picture, top)
        files = downloads.write(app_run, name, top, shown)
        cls, p = top[0]
        status = f"**{cls}** ({p:.1%}) by model `{app_run.name}` for `{name}`"
        if p < LOW_CONFIDENCE:
            status += f"; the model is unsure, so check the card of {top[1][0]} too"
        if app_run.guide is not None and not card_markdown(app_run.guide, cls):
            status += f" (the guide {app_run.guide['name']} has no card for {cls})"
        return top_dict(top), shown, card_with_example(app_run, cls), status, files

    return classify


def frame_view(app_run: AppRun, rgb: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
    """The webcam's classification frame: (the frame with the top class drawn on it, the top classes)."""
    top = classify_frame(app_run, rgb, topk=5)
    return annotate(rgb, top), top_dict(top)


def upload_examples(runs: list, upload) -> None:
    """Up to 12 test-split images of the runs as clickable examples for the ``upload`` field (none: nothing shown)."""
    examples = list(dict.fromkeys(p for r in runs for p in r.examples))[:12]
    if examples:
        gr.Examples([[p] for p in examples], inputs=[upload], label="Examples from the run's test split",
                    example_labels=[example_label(p) for p in examples], examples_per_page=12)


def example_label(path: str) -> str:
    p = Path(path)
    return f"{p.parent.name}/{p.name}"


def build_image_tab(runs: list[AppRun], picker: gr.Dropdown, downloads: Downloads, title: str = "Image",
                    tab_id: str = "image") -> None:
    """Add the classification Image tab to the open Blocks for ``runs``; ``picker`` is the shared model dropdown."""
    with gr.Tab(title, id=tab_id):
        with gr.Row():
            with gr.Column():
                upload = gr.File(label="Image", file_types=sorted(IMAGE_EXTS), type="filepath",
                                 elem_id="image-upload")
                button = gr.Button("Classify", variant="primary")
                upload_examples(runs, upload)
            with gr.Column():
                status = gr.Markdown(elem_id="image-status")
                label = gr.Label(num_top_classes=5, label="Top classes", elem_id="image-label")
                shown = gr.Image(label="Annotated", type="numpy", format="png", interactive=False,
                                 buttons=["download", "fullscreen"])
                files = gr.File(label="Download the prediction (JSON, CSV, annotated PNG)", file_count="multiple",
                                interactive=False)
        card = gr.Markdown(elem_id="image-card")
        # change covers uploads, example clicks and clearing; the picker re-runs the same file on another model.
        # preprocess=False: the handler gets the cached upload's FileData (Gradio's File preprocessing leaves an empty
        # temporary file behind on every call, never deleted); Gradio still checks the path lies in its cache
        gr.on([upload.change, button.click, picker.change], make_classify(runs, downloads), inputs=[upload, picker],
              outputs=[label, shown, card, status, files], api_name="classify", trigger_mode="always_last",
              preprocess=False)
