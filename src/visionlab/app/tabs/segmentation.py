"""The Image tab of segmentation runs: upload a picture (or click a test-split example), get the predicted mask
overlaid on it, the share of the pixels of each class (bars, and a legend table with each class's colour), and the
mask PNG, the overlay PNG and the areas (JSON, CSV) to download. API name: /segment (file, model). Also the webcam's
segmentation frame: the overlay and the areas."""
from __future__ import annotations

import html

import gradio as gr
import numpy as np

from ...data.decode import IMAGE_EXTS
from ...utils import UserError
from ...views.segmentation import overlay_scaled, palette
from ..infer import AppRun, Downloads, display_image, segment_frame, segment_image
from ..upload import open_upload
from .image import NO_UPLOAD, refuse, run_by_name, upload_examples, upload_path

MAX_BARS = 20           # classes shown as bars; the legend table lists every class found


def area_dict(result: dict) -> dict[str, float]:
    """gr.Label's value: class -> share of the pixels (the classes present)."""
    return {c: float(a) for c, a in result["areas"].items()}


def legend_html(result: dict, classes: list[str]) -> str:
    """A table of the classes found, largest first: the overlay's colour, the class name and its share of the
    pixels. Class names come from a run folder, so they are escaped."""
    colors = palette(len(classes))
    index = {c: i for i, c in enumerate(classes)}
    rows = []
    for c, a in sorted(result["areas"].items(), key=lambda t: -t[1]):
        r, g, b = (int(v) for v in colors[index[c]])
        rows.append(f'<tr><td><span style="display:inline-block;width:1em;height:1em;background:rgb({r},{g},{b})">'
                    f'</span></td><td>{html.escape(c)}</td><td style="text-align:right">{a:.1%}</td></tr>')
    return ('<table class="areas"><thead><tr><th></th><th>class</th><th>share of the pixels</th></tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


def shown_overlay(app_run: AppRun, picture: np.ndarray, result: dict) -> np.ndarray:
    """The mask blended onto the picture shown (scaled up to it)."""
    return overlay_scaled(picture, result["mask"], len(app_run.run.classes))


def frame_view(app_run: AppRun, rgb: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
    """The webcam's segmentation frame: (the frame with the mask overlaid, class -> share of the pixels)."""
    result = segment_frame(app_run, rgb)
    return shown_overlay(app_run, rgb, result), area_dict(result)


def make_segment(runs: list[AppRun], downloads: Downloads):
    """The event handler: (upload, model name) -> (areas, overlay, legend table, status, download files).

    A bad upload (empty, truncated, not an image, over the pixel limit) shows a warning and a status message; nothing
    is raised, so the page and the server carry on."""

    def segment(upload: dict | str | None, model: str | None):
        path, name = upload_path(upload)
        if not path:
            return None, None, "", NO_UPLOAD, None
        app_run = run_by_name(runs, model)
        try:
            im = open_upload(path)               # decoded once; the error says why (empty, too large, ...)
            result = segment_image(app_run, im)
            picture = display_image(im)
        except UserError as e:
            return None, None, "", refuse("segment", name, e), None
        shown = shown_overlay(app_run, picture, result)
        files = downloads.write_mask(app_run, name, result, shown)
        cls, share = max(result["areas"].items(), key=lambda t: t[1])
        h, w = result["mask"].shape
        status = (f"**{cls}** covers {share:.1%} of `{name}`; {len(result['areas'])} classes found by model "
                  f"`{app_run.name}` (mask {w}x{h})")
        return area_dict(result), shown, legend_html(result, app_run.run.classes), status, files

    return segment


def build_tab(runs: list[AppRun], picker: gr.Dropdown, downloads: Downloads, title: str = "Image",
              tab_id: str = "image") -> None:
    """Add the segmentation Image tab to the open Blocks for ``runs`` (segmentation runs); ``picker`` is the shared
    model dropdown."""
    bars = min(MAX_BARS, max(len(r.run.classes) for r in runs))
    with gr.Tab(title, id=tab_id):
        with gr.Row():
            with gr.Column():
                upload = gr.File(label="Image", file_types=sorted(IMAGE_EXTS), type="filepath",
                                 elem_id="segment-upload")
                button = gr.Button("Segment", variant="primary")
                upload_examples(runs, upload)
            with gr.Column():
                status = gr.Markdown(elem_id="segment-status")
                shown = gr.Image(label="Predicted mask over the image", type="numpy", format="png",
                                 interactive=False, buttons=["download", "fullscreen"], elem_id="segment-overlay")
                legend = gr.HTML(elem_id="segment-legend")
                areas = gr.Label(num_top_classes=bars, label="Share of the pixels per class", elem_id="segment-areas")
                files = gr.File(label="Download the mask PNG, the overlay PNG and the areas (JSON, CSV)",
                                file_count="multiple", interactive=False)
        # as in the classification tab: preprocess=False keeps Gradio from leaving an empty temporary file behind
        gr.on([upload.change, button.click, picker.change], make_segment(runs, downloads), inputs=[upload, picker],
              outputs=[areas, shown, legend, status, files], api_name="segment", trigger_mode="always_last",
              preprocess=False)
