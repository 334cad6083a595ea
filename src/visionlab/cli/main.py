"""The command line: `visionlab MODE [CONFIG.yaml] [key=value ...]`. Parses, calls the API, prints results."""
from __future__ import annotations

import errno
import sys
from pathlib import Path

from ..utils import ConfigError, UserError

USAGE = """usage: visionlab MODE [CONFIG.yaml] [key=value ...]

modes:
  train [CONFIG.yaml] [key=value ...]    train a run (no config: the embedded MNIST-5k demo); resume=RUN_DIR continues
  eval RUN_DIR [split=test|val|train] [tag=NAME] [KEY=VALUE ...]   re-evaluate the best checkpoint (KEY: data.image_size, the task's section)
  predict RUN_DIR IMAGE... [topk=5] [out=DIR]   top-k classes per image; masks: mask + overlay PNGs in DIR
  generate RUN_DIR [n=64] [class=NAME] [seed=0] [steps=K] [out=DIR]   new images from a vae/dcgan/ddpm run + grid.png
  report DIR                             regenerate the report of a run, seeds, compare or sweep folder
  explain RUN_DIR IMAGE... [method=gradcam|cam] [layer=NAME] [class=NAME|pred] [out=DIR]   CAM / Grad-CAM overlays
  similar RUN_DIR IMAGE [k=8] [metric=cosine|euclidean] [out=DIR]   nearest training images, as a grid
  similar RUN_DIR eval [k=10] [metric=cosine|euclidean]             retrieval recall@k and mAP@k (test vs train)
  fid GENERATED REFERENCE [n=10000] [extractor=auto|lite0|classifier[:DATASET]|inception:PATH] [size=0] [out=FILE.json]   FID/KID of two image folders / DATASET:SPLIT
  export RUN_DIR [format=onnx|torchscript|onnx,torchscript] [quantize=int8] [opset=17] [calib=128] [limit=N]
                                         uint8-input ONNX/TorchScript files in RUN_DIR/export/ + test-split parity
  bench RUN_DIR [batch_sizes=1,32] [iters=30] [warmup=3] [threads=N] [backends=eager-fp32,...,onnx-int8]
                                         latency p50/p95 and img/s per backend -> bench.json, bench.md, report
  stream SOURCE [run=RUN_DIR] [backend=eager|onnx|onnx-int8|torchscript] [detector=hog|haar|mtcnn|none] [fps=N]
         [capture=WxH|W] [input=W] [max_frames=N] [out=DIR] [display=auto|true|false] [sweep=true] [threads=N]
         [win_stride=8] [scale=1.1] [levels=64]   (HOG knobs)
                                         real-time video: boxes/labels, per-stage p50/p95, true vs requested FPS
  app RUN_DIR [RUN_DIR ...] [host=127.0.0.1] [port=7860] [guide=PATH] [max_upload_mb=10] [share=false]
                                         web app: Image, Webcam, Generate tabs
  cfg [CONFIG.yaml] [key=value ...]      print every config key with type, default and help (or the resolved config)
  data check ROOT                        corrupt files, duplicates (also across splits), class balance
  data split ROOT [ratios=8:1:1] [seed=0] [out=split_manifest.csv]   seeded stratified split manifest
  data crop SRC OUT [format=auto|voc|coco|yolo] [margin=0.1] [pad_square=true] [size=64] [names=FILE.yaml]
                                         one image per labelled box -> OUT/<class>/<stem>_<k>.png + crops.csv
  data faces SRC OUT [detector=haar|mtcnn] [margin=0.2] [size=112] [min_size=20]   face crops, class folders kept
  data balance SRC OUT [max_per_class=N] [mode=cap|oversample] [seed=0]          cap or oversample classes
  seeds CONFIG.yaml [n=5] [key=value ...]          the run over n seeds: mean, std, 95 % CI (skips finished seeds)
  compare COMPARE.yaml [n=5] [metric=test/<primary>] baseline vs variants over matched seeds: differences, CIs, p-values
  dg DG.yaml [n=3] [render=true] [key=value ...]   domain generalization: every held-out domain x variant x seed,
                                         held-out top-1 per domain and averaged, paired differences to the baseline
  ensemble RUN_DIR|SEEDS_DIR ... [vote=soft|hard|both] [tta=none|flip] [split=test] [out=DIR]
                                         soft/hard voting of finished runs vs their members' mean +- std
  sweep CONFIG.yaml SPACE.yaml [trials=N] [timeout=S] [storage=URL] [worker=true] [confirm=K n=5] [key=value ...]
                                         grid / random / TPE search (Optuna), median pruning, then confirm over seeds
  (seeds, compare, dg: jobs=N trains N runs at once, each on its share of the cores)
  (distributed: torchrun --nproc_per_node=N -m visionlab train ...)
"""


def _split_args(args: list[str]) -> tuple[list[str], dict[str, str]]:
    pos, kv = [], {}
    for a in args:
        if "=" in a and not Path(a).exists():
            k, v = a.split("=", 1)
            kv[k] = v
        else:
            pos.append(a)
    return pos, kv


def cmd_train(args: list[str]) -> int:
    from .. import api

    cfg_path = args[0] if args and args[0].endswith((".yaml", ".yml")) else None
    overrides = args[1:] if cfg_path else args
    bad = [a for a in overrides if "=" not in a]
    if bad:
        raise ConfigError(f"expected key=value overrides, got {bad[0]!r}" +
                          (" (config files end in .yaml)" if bad[0] == args[0] else ""))
    try:
        result = api.train(cfg_path, overrides)
    except OSError as e:                # some writes (a full disk at fsync) do not say which file: name the folder
        if e.filename is None and e.errno in FS_FIXES:
            from ..config import load_config

            raise OSError(e.errno, e.strerror, load_config(cfg_path, overrides).out_dir) from None
        raise
    s = result.summary
    if not s:                           # a distributed worker other than rank 0: rank 0 reports
        return 0
    shown = [f"{k}={v:.4f}" for k, v in s.items() if k.startswith("test/") and isinstance(v, (int, float))][:4]
    print(" ".join(shown) + f" params={s['params']} train_s={s['timings']['train_s']:.1f}")
    print(f"report: {result.run_dir / 'report.html'}")
    print(result.run_dir)
    return 0


def cmd_eval(args: list[str]) -> int:
    from .. import api

    pos, kv = _split_args(args)
    if len(pos) != 1:
        raise UserError("usage: visionlab eval RUN_DIR [split=test|val|train] [tag=NAME] [KEY=VALUE ...]  "
                        "(KEY: data.image_size, train.eval_batch_size, ... or the task's section, e.g. "
                        "segmentation.tta_scales)")
    split, tag = kv.pop("split", "test"), kv.pop("tag", "")
    metrics = api.evaluate(pos[0], split, [f"{k}={v}" for k, v in kv.items()], tag)
    for k, v in metrics.items():
        if isinstance(v, float):
            print(f"{k}={v:.4f}")
    return 0


def cmd_predict(args: list[str]) -> int:
    from .. import api
    from ..views.tasks import view_for

    pos, kv = _split_args(args)
    if len(pos) < 2:
        raise UserError("usage: visionlab predict RUN_DIR IMAGE [IMAGE ...] [topk=5] [out=DIR]")
    topk = _int(kv.pop("topk", "5"), "topk", minimum=1)
    out = kv.pop("out", "")
    _reject_unknown(kv)
    for image in pos[1:]:
        if not Path(image).is_file():
            raise UserError(f"{image}: " + ("is a folder; pass image files (e.g. FOLDER/*.jpg)" if Path(image).is_dir()
                                            else "image not found; check the path"))
    run = api.load_run(pos[0])
    results = [api.predict(run, [image], topk=topk)[0] for image in pos[1:]]   # images may differ in size
    out_dir = Path(out) if out else Path(pos[0]) / "predictions"
    for line in view_for(run.cfg.task).show_predictions(results, pos[1:], out_dir):
        print(line)
    return 0


def cmd_report(args: list[str]) -> int:
    from .. import api

    if len(args) != 1:
        raise UserError("usage: visionlab report RUN_DIR")
    print(api.report(args[0]))
    return 0


def cmd_cfg(args: list[str]) -> int:
    from .. import config as C

    if args:
        cfg_path = args[0] if args[0].endswith((".yaml", ".yml")) else None
        print(C.dump_yaml(C.load_config(cfg_path, args[1:] if cfg_path else args)), end="")
        return 0
    from ..models import MODELS
    from ..models.detection import DETECTION_MODELS

    for key, typ, default, help_ in C.fields_table():
        shown = "''" if default == "" else str(default)
        print(f"{key:<24} {typ:<6} {shown:<12} {help_}")
    print(f"\nmodels: {', '.join(MODELS.names())}")
    print(f"detectors (task=detection): {', '.join(sorted(DETECTION_MODELS))}")
    return 0


def cmd_data(args: list[str]) -> int:
    from ..data import check, folder, split

    pos, kv = _split_args(args)
    if pos and pos[0] in ("crop", "faces", "balance"):
        from . import data as cli_data

        rest = list(args)
        rest.remove(pos[0])
        return {"crop": cli_data.cmd_crop, "faces": cli_data.cmd_faces, "balance": cli_data.cmd_balance}[pos[0]](rest)
    if len(pos) != 2 or pos[0] not in ("check", "split"):
        raise UserError("usage: visionlab data check ROOT | visionlab data split ROOT [ratios=8:1:1] [seed=0] [out=CSV]"
                        " | visionlab data crop|faces|balance SRC OUT [key=value ...]")
    action, root = pos
    if action == "check":
        _reject_unknown(kv)
        if check.is_mask_folder(root):          # images/ + masks/: a segmentation dataset
            print(check.format_mask_check(check.check_mask_folder(root)))
        else:
            print(check.format_check(check.check_dataset(root)))
        return 0
    ratios = split.parse_ratios(kv.pop("ratios", "8:1:1"))
    seed = _int(kv.pop("seed", "0"), "seed")
    out = kv.pop("out", str(Path(root).name + "_split.csv"))
    _reject_unknown(kv)
    print(folder.split_folder(root, ratios, seed, out))
    return 0


def _int(value: str, key: str, minimum: int | None = None, example: int = 5) -> int:
    try:
        n = int(value)
    except ValueError:
        raise ConfigError(f"{key}: expected int, got {value!r}") from None
    if minimum is not None and n < minimum:
        raise ConfigError(f"{key}={n} is out of range: it must be >= {minimum}; e.g. {key}={example}")
    return n


# file-system errors that are the user's to fix (a read-only, full or foreign folder, a link loop), and the fix
FS_FIXES = {errno.EROFS: "the file system is read-only: write elsewhere (out_dir=DIR for runs, out=DIR for outputs)",
            errno.EACCES: "permission denied: fix the folder's permissions, or write elsewhere (out_dir=DIR for runs)",
            errno.EPERM: "operation not permitted: fix the folder's permissions, or write elsewhere (out_dir=DIR)",
            errno.ENOSPC: "no space left on the device: free some space, or write elsewhere (out_dir=DIR for runs)",
            errno.EDQUOT: "disk quota exceeded: free some space, or write elsewhere (out_dir=DIR for runs)",
            errno.ELOOP: "too many levels of symbolic links: remove the link loop"}


def fs_error_message(e: OSError) -> str | None:
    """One line naming the path and the fix for a file-system error the user can fix; None for other errors."""
    fix = FS_FIXES.get(e.errno)
    if fix is None:
        return None
    return f"{e.filename}: {fix}" if e.filename else fix


def _reject_unknown(kv: dict) -> None:
    if kv:
        raise ConfigError(f"unknown option {next(iter(kv))!r} for this mode")


def _lazy(module: str, name: str):
    """A mode whose code lives in ``visionlab.<module>``, imported only when that mode runs (fast start-up)."""
    def run(args: list[str]) -> int:
        from importlib import import_module

        return getattr(import_module(f"visionlab.cli.{module}"), name)(args)

    return run


MODES = {"train": cmd_train, "eval": cmd_eval, "predict": cmd_predict, "report": cmd_report, "cfg": cmd_cfg,
         "data": cmd_data, "fid": _lazy("fid", "cmd_fid"),
         "seeds": _lazy("experiments", "cmd_seeds"), "compare": _lazy("experiments", "cmd_compare"),
         "dg": _lazy("dg", "cmd_dg"),
         "ensemble": _lazy("experiments", "cmd_ensemble"), "sweep": _lazy("sweep", "cmd_sweep"),
         "explain": _lazy("explain", "cmd_explain"), "similar": _lazy("similar", "cmd_similar"),
         "app": _lazy("app", "cmd_app"), "export": _lazy("deploy", "cmd_export"),
         "bench": _lazy("deploy", "cmd_bench"), "stream": _lazy("stream", "cmd_stream"),
         "generate": _lazy("generate", "cmd_generate")}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    mode, args = argv[0], argv[1:]
    if mode not in MODES:
        from ..utils import closest

        hint = closest(mode, MODES)
        print(f"error: unknown mode {mode!r}" + (f"; did you mean {hint!r}?" if hint else "") + "\n\n" + USAGE,
              file=sys.stderr)
        return 2
    try:
        return MODES[mode](args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted; continue with `visionlab train resume=RUN_DIR`", file=sys.stderr)
        return 130
    except BrokenPipeError:             # `visionlab cfg | head`: the reader left; not an error of ours
        sys.stderr.close()
        return 0
    except OSError as e:
        msg = fs_error_message(e)
        if msg is None:
            raise
        print(f"error: {msg}", file=sys.stderr)
        return 1
