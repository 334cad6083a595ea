"""The Generate tab: sample images from a generative run (``generate(n, seed, label, steps) -> uint8 [n, H, W, C]``):
a class picker for class-conditional models, a steps number for diffusion models, the samples in a gallery and as
downloads. Until a generative run is given the tab says which run would enable it. API name: /generate."""
from __future__ import annotations

import gradio as gr

from ...tasks import TASKS
from ...utils import UserError
from ..infer import AppRun, Downloads, sample_steps, sample_images

MAX_IMAGES = 16
MAX_STEPS = 1000
ANY = "any"                             # the class picker's "no class chosen": classes balanced
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


def class_choices(app_run: AppRun) -> list[str]:
    """The class picker's entries: "any" and the run's classes for a conditional model, none otherwise."""
    task = app_run.run.task
    return [ANY, *app_run.run.info.classes] if task.conditional else []


def _whole(value, key: str, low: int, high: int | None = None) -> int:
    """A number field's value as an int in [low, high]; a UserError naming the field otherwise."""
    try:
        v = int(value)
    except (TypeError, ValueError):
        v = None
    if v is None or v != value or v < low or (high is not None and v > high):
        span = f"from {low} to {high}" if high is not None else f">= {low}"
        raise UserError(f"{key} must be a whole number {span}, got {value!r}")
    return v


def make_generate(runs: list[AppRun]):
    """The sampler: (run name, number of images, seed, class, steps) -> list of uint8 images (HxW for gray).
    ``label`` None / "" / "any": classes balanced; ``steps`` None / 0: the run's own (diffusion models only)."""

    def generate(name: str, n: float, seed: float, label: str | None = None, steps: float | None = None):
        run = next((r for r in runs if r.name == name), runs[0])
        n, seed = _whole(n, "Images", 1, MAX_IMAGES), _whole(seed, "Seed", 0)
        steps = _whole(steps, "Steps", 1, MAX_STEPS) if steps and sample_steps(run) is not None else None
        images = sample_images(run, n, seed, None if label in (None, "", ANY) else label, steps)
        return [im[..., 0] if im.shape[-1] == 1 else im for im in images]

    return generate


def make_generate_files(runs: list[AppRun], downloads: Downloads):
    """The tab's click handler: (run name, n, seed, class, steps) -> (gallery, download files, status line). Bad
    input (an unknown class, a class for an unconditional model, a bad number) is a warning and a status message,
    nothing raised, so the page carries on."""
    sample = make_generate(runs)

    def generate(name: str, n: float, seed: float, label: str | None = None, steps: float | None = None):
        run = next((r for r in runs if r.name == name), runs[0])
        try:
            images = sample(name, n, seed, label, steps)
        except UserError as e:
            gr.Warning(f"Cannot generate: {e}")
            return None, None, f"**Cannot generate: {e}**"
        label = None if label in (None, "", ANY) else label
        steps = int(steps) if steps and sample_steps(run) is not None else sample_steps(run)
        files = downloads.write_samples(run, images, int(seed), label, steps)
        what = f"class {label}" if label else ("classes balanced" if class_choices(run) else "unconditional")
        status = (f"{len(images)} images from `{run.name}` (seed {int(seed)}, {what}"
                  + (f", {steps} steps" if steps else "") + ")")
        return images, files, status

    return generate


def make_controls(runs: list[AppRun]):
    """The run picker's change: the class picker (conditional models) and the steps number (diffusion models)
    follow the chosen run."""

    def controls(name: str):
        run = next((r for r in runs if r.name == name), runs[0])
        choices, steps = class_choices(run), sample_steps(run)
        return (gr.Dropdown(choices=choices, value=ANY if choices else None, visible=bool(choices)),
                gr.Number(value=steps or 1, visible=steps is not None))

    return controls


def build_generate_tab(runs: list[AppRun], downloads: Downloads) -> None:
    """Add the Generate tab: controls when a generative run is among ``runs``, else how to get one."""
    gen_runs = [r for r in runs if r.generative]
    with gr.Tab("Generate", id="generate"):
        if not gen_runs:
            gr.Markdown(how_to_enable(), elem_id="generate-message")
            return
        first = gen_runs[0]
        choices, steps0 = class_choices(first), sample_steps(first)
        with gr.Row():
            model = gr.Dropdown([r.name for r in gen_runs], value=first.name, label="Generative run",
                                visible=len(gen_runs) > 1, elem_id="generate-run")
            label = gr.Dropdown(choices, value=ANY if choices else None, label="Class", visible=bool(choices),
                                elem_id="generate-class")
            n = gr.Slider(1, MAX_IMAGES, value=8, step=1, label="Images")
            seed = gr.Number(0, precision=0, minimum=0, label="Seed (same seed, same images)")
            steps = gr.Number(steps0 or 1, precision=0, minimum=1, maximum=MAX_STEPS, visible=steps0 is not None,
                              label="Sampling steps (DDIM; fewer: faster, rougher)", elem_id="generate-steps")
        button = gr.Button("Generate", variant="primary")
        status = gr.Markdown(elem_id="generate-status")
        gallery = gr.Gallery(label="Samples", columns=4, format="png", buttons=["download", "download_all"])
        files = gr.File(label="Download the samples (grid PNG, zip of PNGs)", file_count="multiple",
                        interactive=False)
        button.click(make_generate_files(gen_runs, downloads), inputs=[model, n, seed, label, steps],
                     outputs=[gallery, files, status], api_name="generate")
        model.change(make_controls(gen_runs), inputs=[model], outputs=[label, steps])

