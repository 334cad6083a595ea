"""The web app: a Gradio Blocks page (an Image tab per task, from tabs/tasks.py's table; Webcam and Generate tabs)
built from one or more run directories, and
its launch: 127.0.0.1 by default, an upload size limit, no analytics, nothing fetched from the network, and no file
left behind (Gradio's copies of uploads and outputs are deleted after an hour and when the app closes)."""
from __future__ import annotations

import atexit
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from ..run import test_key
from ..utils import UserError
from .guide import missing_classes
from .infer import KEEP_DOWNLOADS_S, AppRun, Downloads, load_app_runs
from .tabs.generate import build_generate_tab
from .tabs.tasks import TASK_TABS, shows_cards, tab_for
from .tabs.webcam import build_webcam_tab

QUEUE_MAX = 32              # requests waiting at once; more are refused instead of piling up on a 2-core machine
CLOSE_WAIT_S = 30           # how long close() waits for the server thread (open connections drain, then the cache)
DELETE_CACHE = (600, KEEP_DOWNLOADS_S)   # every 10 min Gradio deletes its copies older than an hour; all on close


def _describe(r: AppRun) -> str:
    s, cfg = r.summary, r.run.cfg
    key = test_key(s.get("primary_metric") or "val/acc")              # test/acc, test/miou, ...
    score = f", {key.replace('/', ' ')} {s[key]:.3f} on {s.get('test_size', '?')} images" \
        if isinstance(s.get(key), (int, float)) else ""
    guide = f"guide `{r.guide['name']}`" if r.guide else "no guide (no info cards)"    # not the server's path
    return (f"- **{r.name}**: {cfg.task}, `{cfg.model.name}` on `{cfg.data.name}`, {len(r.run.classes)} classes"
            f"{score}" + (f"; {guide}" if shows_cards(r.task) else ""))


def header_markdown(runs: list[AppRun]) -> str:
    """The page heading: each run's task, model, data, primary test metric and guide (tasks that show cards)."""
    return "# visionlab\n\n" + "\n".join(_describe(r) for r in runs)


def build_app(runs: list[AppRun], downloads: Downloads) -> gr.Blocks:
    """The Blocks page for loaded runs. The model picker is shared by the tabs and shown for two or more runs."""
    with gr.Blocks(title="visionlab", analytics_enabled=False, delete_cache=DELETE_CACHE) as demo:
        gr.Markdown(header_markdown(runs))
        picker = gr.Dropdown([r.name for r in runs], value=runs[0].name, label="Model",
                             visible=len(runs) > 1, elem_id="model-picker")
        with gr.Tabs():
            build_image_tabs(runs, picker, downloads)
            build_webcam_tab(runs, picker)
            build_generate_tab(runs, downloads)
    return demo


def build_image_tabs(runs: list[AppRun], picker: gr.Dropdown, downloads: Downloads) -> None:
    """One Image tab per task among ``runs`` (TASK_TABS order), each over its task's runs: "Image" when all runs
    share a task, "Image: <task>" beside each other otherwise."""
    groups = {t: [r for r in runs if r.task == t] for t in TASK_TABS}
    groups = {t: rs for t, rs in groups.items() if rs}
    for k, (task, task_runs) in enumerate(groups.items()):
        title = "Image" if len(groups) == 1 else f"Image: {task}"
        TASK_TABS[task].build_image_tab(task_runs, picker, downloads, title, "image" if k == 0 else f"image-{task}")


@dataclass
class Served:
    """A running app: its Blocks, the URL it listens on, the folder of downloadable files, the loaded runs."""

    demo: gr.Blocks
    url: str
    downloads: Downloads
    runs: list[AppRun]

    def close(self) -> None:
        """Stop the server; Gradio deletes its cached uploads and outputs (delete_cache), we delete our downloads."""
        server = self.demo.server
        self.demo.close()
        if server is not None and getattr(server, "thread", None) is not None:
            server.thread.join(CLOSE_WAIT_S)     # the cache deletion runs last in the server thread; Gradio waits 5 s
        self.downloads.close()


def serve(run_dirs: list[str | Path], host: str = "127.0.0.1", port: int = 7860, guide: str | Path | None = None,
          max_upload_mb: float = 10, share: bool = False, block: bool = True) -> Served:
    """Load the runs, build the page and listen on host:port. ``block=False`` returns while the server runs
    (tests, notebooks); ``block=True`` serves until interrupted."""
    if not run_dirs:
        raise UserError("visionlab app needs at least one RUN_DIR (a folder made by `visionlab train`)")
    runs = load_app_runs(run_dirs, guide)
    for r in runs:
        if not r.generative:
            tab_for(r.task)                     # a task the app has no tab for: a UserError naming those it has
        if not shows_cards(r.task):
            r.guide = None                      # no cards for this task: a guide found by lookup is not used
        lost = missing_classes(r.guide, r.run.classes)
        if lost:
            print(f"note: {r.guide['path']} has no card for {', '.join(lost)} (run {r.name})", flush=True)
    downloads = Downloads()
    atexit.register(downloads.close)
    demo = build_app(runs, downloads)
    demo.queue(max_size=QUEUE_MAX)
    allowed = [p for r in runs for p in r.examples]        # exactly the example files (inside the data root)
    try:
        demo.launch(server_name=host, server_port=port, share=share, max_file_size=int(max_upload_mb * 2**20),
                    prevent_thread_lock=not block, allowed_paths=allowed, ssr_mode=False, mcp_server=False,
                    enable_monitoring=False, pwa=False, show_error=False, quiet=not block)
    except OSError as e:
        downloads.close()
        raise UserError(f"cannot listen on {host}:{port} ({e}); pass another port=N, or stop what uses it") from None
    served = Served(demo, demo.local_url, downloads, runs)
    if block:                       # launch returned: interrupted (Ctrl-C) and the server stopped; clean up now
        served.close()
    return served
