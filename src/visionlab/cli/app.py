"""CLI mode `visionlab app RUN_DIR [RUN_DIR ...] [host=127.0.0.1] [port=7860] [guide=PATH] [max_upload_mb=10]
[share=false]`: the web app (Image, Webcam, Generate tabs) over one or more runs."""
from __future__ import annotations

from .args import split_options
from ..utils import ConfigError, UserError

USAGE = "usage: visionlab app RUN_DIR [RUN_DIR ...] [host=127.0.0.1] [port=7860] [guide=PATH] [max_upload_mb=10] " \
        "[share=false]"
OPTIONS = ("host", "port", "guide", "max_upload_mb", "share")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def parse(args: list[str]) -> dict:
    """Check the arguments of `visionlab app` and return serve()'s keyword arguments."""
    pos, kv = split_options(args, "app", OPTIONS, USAGE)
    if not pos:
        raise UserError(f"visionlab app needs at least one RUN_DIR\n{USAGE}")
    try:
        port = int(kv.get("port", "7860"))
    except ValueError:
        raise ConfigError(f"port must be an integer 1-65535, got {kv['port']!r}") from None
    if not 1 <= port <= 65535:
        raise ConfigError(f"port must be an integer 1-65535, got {port}")
    try:
        mb = float(kv.get("max_upload_mb", "10"))
    except ValueError:
        raise ConfigError(f"max_upload_mb must be a positive number, got {kv['max_upload_mb']!r}") from None
    if not 0 < mb <= 1024:
        raise ConfigError(f"max_upload_mb must be between 0 and 1024, got {mb:g}")
    share = kv.get("share", "false").lower()
    if share not in ("true", "false", "1", "0", "yes", "no"):
        raise ConfigError(f"share must be true or false, got {kv['share']!r}")
    return {"run_dirs": pos, "host": kv.get("host", "127.0.0.1") or "127.0.0.1", "port": port,
            "guide": kv.get("guide") or None, "max_upload_mb": mb, "share": share in ("true", "1", "yes")}


def cmd_app(args: list[str]) -> int:
    """Serve the app until Ctrl-C. Warns when it is reachable from other machines (host other than loopback, share)."""
    opts = parse(args)
    try:
        from ..app.main import serve        # gradio loads only for this mode
    except ImportError as e:
        if (e.name or "").split(".")[0] not in ("gradio", "gradio_client"):
            raise
        raise UserError("visionlab app needs gradio: pip install -e '.[app]' (or pip install 'gradio>=5')") from None

    if opts["host"] not in LOOPBACK:
        print(f"note: listening on {opts['host']}: other machines on the network can use this app", flush=True)
    if opts["share"]:
        print("note: share=true makes a public link through Gradio's servers (needs the internet); anyone with the "
              "link can use the app", flush=True)
    print(f"loading {len(opts['run_dirs'])} run(s); open http://{opts['host']}:{opts['port']} "
          f"(uploads up to {opts['max_upload_mb']:g} MiB)", flush=True)
    try:
        serve(**opts, block=True)
    except KeyboardInterrupt:
        pass
    return 0
