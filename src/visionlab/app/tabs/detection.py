"""The Image tab of detection runs: upload a picture (or click a test-split example), get it back with the detected
boxes drawn (class and score), a table of the detections (class, score, box in the image's own pixels), the number of
boxes per class, a score-threshold slider starting at the run's display threshold, and prediction.json,
prediction.csv and annotated.png to download. API name: /detect (file, model, threshold). Also the webcam's detection
frame: the boxes drawn on it and each class's best score."""
from __future__ import annotations

import html

import gradio as gr
import numpy as np

from ...data.decode import IMAGE_EXTS
from ...utils import UserError
from ...views.detection import class_colors, draw_boxes
from ..infer import (AppRun, Downloads, above, best_scores, box_counts, detect_frame, detect_image, display_image,
                     display_threshold, upload_size)
from ..upload import open_upload
from .image import NO_UPLOAD, refuse, run_by_name, upload_examples, upload_path

TABLE_HEADERS = ["class", "score", "x0", "y0", "x1", "y1"]


def drawn(app_run: AppRun, picture: np.ndarray, result: dict, size: tuple[int, int]) -> np.ndarray:
    """``picture`` with the boxes of ``result`` drawn in their class colours with class and score; the boxes are in
    the pixels of an image of (width, height) ``size`` and are scaled to the picture (shown smaller)."""
    h, w = picture.shape[:2]
    boxes = np.asarray(result["boxes"], np.float64) * np.array([w / size[0], h / size[1]] * 2)
    return draw_boxes(picture, boxes, result["labels"], app_run.run.classes, result["scores"],
                      width=max(2, round(max(h, w) / 320)))


def frame_view(app_run: AppRun, rgb: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
    """The webcam's detection frame: (the frame with the boxes drawn at the run's display threshold, every class ->
    its best box score, 0.0 for a class not found)."""
    result = detect_frame(app_run, rgb)
    return drawn(app_run, rgb, result, rgb.shape[1::-1]), best_scores(result, app_run.run.classes)


def table_rows(result: dict) -> list[list]:
    """One row per detection, best first: class, score (3 decimals), box xyxy in the image's pixels (1 decimal;
    prediction.json has them unrounded)."""
    return [[c, round(float(p), 3), *(round(float(v), 1) for v in b)]
            for c, p, b in zip(result["classes"], result["scores"], result["boxes"])]


def summary_html(result: dict, classes: list[str]) -> str:
    """A table of the classes found, most boxes first: the boxes' colour, the class name, how many boxes and the
    best score. Class names come from a run folder, so they are escaped."""
    colors, index = class_colors(), {c: i for i, c in enumerate(classes)}
    best = best_scores(result, classes)
    rows = []
    for c, n in box_counts(result).items():
        r, g, b = (int(v) for v in colors[index[c]])
        rows.append(f'<tr><td><span style="display:inline-block;width:1em;height:1em;background:rgb({r},{g},{b})">'
                    f'</span></td><td>{html.escape(c)}</td><td style="text-align:right">{n}</td>'
                    f'<td style="text-align:right">{best[c]:.2f}</td></tr>')
    return ('<table class="box-counts"><thead><tr><th></th><th>class</th><th>boxes</th><th>best score</th></tr>'
            f'</thead><tbody>{"".join(rows)}</tbody></table>')


def status_line(app_run: AppRun, name: str, result: dict, size: tuple[int, int], threshold: float) -> str:
    """What was found in ``name``, at which threshold, by which model."""
    found = ", ".join(f"{n} {c}" for c, n in box_counts(result).items())
    what = f"**{len(result['boxes'])} boxes** ({found})" if found else "**no boxes**"
    line = (f"{what} with score >= {threshold:.2f} in `{name}` ({size[0]}x{size[1]}) by model `{app_run.name}`")
    if not found and threshold > display_threshold(app_run):
        line += "; lower the threshold to see weaker boxes"
    return line


def make_detect(runs: list[AppRun], downloads: Downloads):
    """The event handler: (upload, model name, score threshold) -> (annotated image, detections table, per-class
    summary, status, download files).

    The boxes are predict's at the run's display threshold (``detection.score_threshold``), kept when they score at
    least the slider's value; a lower value shows no more boxes than the run gives. A bad upload (empty, truncated,
    not an image, over the pixel limit) shows a warning and a status message; nothing is raised, so the page and
    the server carry on."""

    def detect(upload: dict | str | None, model: str | None, threshold: float | None = None):
        path, name = upload_path(upload)
        if not path:
            return None, None, "", NO_UPLOAD, None
        app_run = run_by_name(runs, model)
        threshold = max(float(threshold or 0.0), display_threshold(app_run))
        try:
            im = open_upload(path)               # decoded once; the error says why (empty, too large, ...)
            size = upload_size(path, im)
            result = above(detect_image(app_run, im, size), threshold)
            picture = display_image(im)
        except UserError as e:
            return None, None, "", refuse("detect objects in", name, e), None
        shown = drawn(app_run, picture, result, size)
        files = downloads.write_boxes(app_run, name, result, size, threshold, shown)
        return (shown, table_rows(result), summary_html(result, app_run.run.classes),
                status_line(app_run, name, result, size, threshold), files)

    return detect


def build_tab(runs: list[AppRun], picker: gr.Dropdown, downloads: Downloads, title: str = "Image",
              tab_id: str = "image") -> None:
    """Add the detection Image tab to the open Blocks for ``runs`` (detection runs); ``picker`` is the shared model
    dropdown. The slider starts at the first run's display threshold and goes no lower than the runs'."""
    thresholds = [display_threshold(r) for r in runs]
    with gr.Tab(title, id=tab_id):
        with gr.Row():
            with gr.Column():
                upload = gr.File(label="Image", file_types=sorted(IMAGE_EXTS), type="filepath",
                                 elem_id="detect-upload")
                threshold = gr.Slider(min(thresholds), 1.0, value=thresholds[0], step=0.01, label="Score threshold",
                                      info="boxes scoring at least this much; the run's display threshold "
                                           "(detection.score_threshold) is the lowest", elem_id="detect-threshold")
                button = gr.Button("Detect", variant="primary")
                upload_examples(runs, upload)
            with gr.Column():
                status = gr.Markdown(elem_id="detect-status")
                shown = gr.Image(label="Detected boxes (class, score)", type="numpy", format="png",
                                 interactive=False, buttons=["download", "fullscreen"], elem_id="detect-boxes")
                summary = gr.HTML(elem_id="detect-summary")
                table = gr.Dataframe(headers=TABLE_HEADERS, datatype=["str"] + ["number"] * 5, type="array",
                                     interactive=False, label="Detections (box in the image's pixels)",
                                     elem_id="detect-table")
                files = gr.File(label="Download the detections (JSON, CSV) and the annotated PNG",
                                file_count="multiple", interactive=False)
        # as in the classification tab: preprocess=False keeps Gradio from leaving an empty temporary file behind
        gr.on([upload.change, button.click, picker.change, threshold.release], make_detect(runs, downloads),
              inputs=[upload, picker, threshold], outputs=[shown, table, summary, status, files], api_name="detect",
              trigger_mode="always_last", preprocess=False)
