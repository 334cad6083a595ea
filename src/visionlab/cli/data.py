"""CLI modes that build datasets: `visionlab data crop|faces|balance SRC OUT [key=value ...]`."""
from __future__ import annotations

from pathlib import Path

from ..utils import ConfigError, UserError, closest

USAGE_CROP = ("usage: visionlab data crop SRC OUT [format=auto|voc|coco|yolo] [margin=0.0] [pad_square=false] "
              "[size=0] [min_size=0] [names=FILE.yaml] [images=DIR]")
USAGE_FACES = ("usage: visionlab data faces SRC OUT [detector=haar|mtcnn] [margin=0.2] [pad_square=true] [size=0] "
               "[min_size=20] [largest=false]")
USAGE_BALANCE = "usage: visionlab data balance SRC OUT [max_per_class=N] [mode=auto|cap|oversample] [seed=0] [link=true]"
TRUE, FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def _bool(key: str, v: str) -> bool:
    if v.lower() in TRUE + FALSE:
        return v.lower() in TRUE
    raise ConfigError(f"{key}: expected true or false, got {v!r}")


def _number(cast, example: str, minimum=0):
    def parse(key: str, v: str):
        try:
            n = cast(v)
        except ValueError:
            raise ConfigError(f"{key}: expected {cast.__name__}, got {v!r} (e.g. {key}={example})") from None
        if minimum is not None and not n >= minimum:          # not >=: a nan fails too
            raise ConfigError(f"{key}={v} is out of range: it must be >= {minimum} (e.g. {key}={example})")
        return n
    return parse


def _choice(*names: str):
    def parse(key: str, v: str) -> str:
        if v not in names:
            raise ConfigError(f"{key}={v!r}: expected one of {', '.join(names)}")
        return v
    return parse


def _text(key: str, v: str) -> str:
    return v


def _parse(args: list[str], spec: dict, usage: str) -> tuple[str, str, dict]:
    """(SRC, OUT, options): two positionals, then key=value options typed by ``spec`` {key: (parser, default)}."""
    pos, opts = [], {}
    for a in args:
        if "=" in a and not Path(a).exists():
            k, v = a.split("=", 1)
            if k not in spec:
                hint = closest(k, spec)
                raise ConfigError(f"unknown option {k!r}" + (f"; did you mean {hint!r}?" if hint else "") +
                                  f"\nvalid options: {', '.join(spec)}\n{usage}")
            opts[k] = spec[k][0](k, v)
        else:
            pos.append(a)
    if len(pos) != 2:
        raise UserError(f"expected a source and an output folder, got {len(pos)} paths\n{usage}")
    return pos[0], pos[1], {k: opts.get(k, d) for k, (_, d) in spec.items()}


def cmd_crop(args: list[str]) -> int:
    """`visionlab data crop SRC OUT ...`: one image per labelled box, in class folders."""
    from ..data.crop import crop_dataset, format_report

    spec = {"format": (_choice("auto", "voc", "coco", "yolo"), "auto"), "margin": (_number(float, "0.1"), 0.0),
            "pad_square": (_bool, False), "size": (_number(int, "64"), 0), "min_size": (_number(int, "8"), 0),
            "names": (_text, None), "images": (_text, None)}
    src, out, o = _parse(args, spec, USAGE_CROP)
    report = crop_dataset(src, out, **o)
    print(format_report(report, "crops"))
    print(f"train on it: visionlab train data.name=folder data.root={report['out']} data.image_size=64")
    print(report["out"])
    return 0


def cmd_faces(args: list[str]) -> int:
    """`visionlab data faces SRC OUT ...`: one image per detected face, keeping class folders."""
    from ..data.crop import format_report
    from ..data.faces import crop_faces

    spec = {"detector": (_choice("haar", "mtcnn"), "haar"), "margin": (_number(float, "0.2"), 0.2),
            "pad_square": (_bool, True), "size": (_number(int, "112"), 0), "min_size": (_number(int, "20"), 20),
            "largest": (_bool, False)}
    src, out, o = _parse(args, spec, USAGE_FACES)
    report = crop_faces(src, out, **o)
    print(format_report(report, "faces"))
    print(report["out"])
    return 0


def cmd_balance(args: list[str]) -> int:
    """`visionlab data balance SRC OUT ...`: cap or oversample classes; prints counts before and after."""
    from ..data.balance import balance_folder, format_balance

    spec = {"max_per_class": (_number(int, "100", minimum=1), None),
            "mode": (_choice("auto", "cap", "oversample"), "auto"),
            "seed": (_number(int, "0", minimum=None), 0), "link": (_bool, True)}
    src, out, o = _parse(args, spec, USAGE_BALANCE)
    report = balance_folder(src, out, **o)
    print(format_balance(report))
    print(report["out"])
    return 0
