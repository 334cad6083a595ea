"""The Generate tab: sample images from a generative run. A run qualifies when its task has
``generate(n, seed) -> uint8 [n, H, W, C]`` (the contract a VAE / DCGAN / DDPM task provides); until one is given
the tab says which run would enable it."""
from __future__ import annotations

import gradio as gr
import numpy as np

from ...tasks import TASKS
from ..infer import AppRun

MAX_IMAGES = 16
PLANNED = ("vae", "dcgan", "ddpm")      # the generative tasks of the design notes


def how_to_enable() -> str:
    """The message shown when no generative run was given: which run task enables the tab, and how to add it."""
    have = [n for n in TASKS.names() if n in PLANNED]
    tasks = ", ".join(f"`task={n}`" for n in (have or PLANNED))
    lines = ["**No generative run loaded.** This tab samples new images from a run whose task can generate them "
             f"({tasks}).",
             f"Tasks registered in this install: {', '.join(TASKS.names())}."]
    if have:
        lines.append(f"Train one (`visionlab train CONFIG.yaml task={have[0]}`) and start the app with its run "
                     "directory as well: `visionlab app CLASSIFIER_RUN GENERATIVE_RUN`.")
    else:
        lines.append("None of them is generative yet: a generative task goes in `src/visionlab/tasks/<task>.py` "
                     "(registered in `tasks/__init__.py`) with `generate(n, seed)` returning uint8 images "
                     "[n, H, W, C]; train it, then start `visionlab app CLASSIFIER_RUN GENERATIVE_RUN`.")
    return "\n\n".join(lines)


def make_generate(runs: list[AppRun]):
    """The handler: (run name, number of images, seed) -> gallery of uint8 images."""

    def generate(name: str, n: float, seed: float):
        run = next((r for r in runs if r.name == name), runs[0])
        images = np.asarray(run.run.task.generate(int(n), int(seed)), dtype=np.uint8)
        return [im[..., 0] if im.shape[-1] == 1 else im for im in images]

    return generate


def build_generate_tab(runs: list[AppRun]) -> None:
    """Add the Generate tab: controls when a generative run is among ``runs``, else how to get one."""
    gen_runs = [r for r in runs if r.generative]
    with gr.Tab("Generate", id="generate"):
        if not gen_runs:
            gr.Markdown(how_to_enable(), elem_id="generate-message")
            return
        with gr.Row():
            model = gr.Dropdown([r.name for r in gen_runs], value=gen_runs[0].name, label="Generative run",
                                visible=len(gen_runs) > 1)
            n = gr.Slider(1, MAX_IMAGES, value=8, step=1, label="Images")
            seed = gr.Number(0, precision=0, label="Seed (same seed, same images)")
        button = gr.Button("Generate", variant="primary")
        gallery = gr.Gallery(label="Samples", columns=4, format="png", buttons=["download", "download_all"])
        button.click(make_generate(gen_runs), inputs=[model, n, seed], outputs=[gallery], api_name="generate")
