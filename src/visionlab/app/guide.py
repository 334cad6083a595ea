"""Information cards: a per-class guide YAML (e.g. configs/trashnet_guide.yaml) found beside a run's config.

Lookup order: an explicit ``guide=PATH``; else ``<data.name>_guide.yaml`` beside the config file named in the run's
env.json argv; else in ``configs/`` of the directory training ran in, of the current directory, then of this source
checkout; else no cards.
"""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from ..utils import UserError

CARD_KEYS = ("summary", "bin", "accepted", "prepare", "not_accepted")
CHECKOUT_CONFIGS = Path(__file__).resolve().parents[3] / "configs"     # exists in a source checkout only
SECTION_TITLES = {"accepted": "What goes in", "prepare": "What to do", "not_accepted": "What not"}


def _train_env(run_dir: Path) -> tuple[list[str], Path | None]:
    """The argv and working directory of the `visionlab train` that made the run (empty when unknown)."""
    try:
        env = json.loads((run_dir / "env.json").read_text())
    except (OSError, ValueError):
        return [], None
    return [str(a) for a in env.get("argv") or []], Path(env["cwd"]) if env.get("cwd") else None


def guide_candidates(run_dir: str | Path, data_name: str) -> list[Path]:
    """Where the guide of a run may lie, in lookup order (explicit guide= excluded)."""
    argv, cwd = _train_env(Path(run_dir))
    name = f"{data_name}_guide.yaml"
    out = []
    for a in argv[1:]:
        if a.endswith((".yaml", ".yml")) and "=" not in a:
            cfg = Path(a) if Path(a).is_absolute() or cwd is None else cwd / a
            out.append(cfg.parent / name)
    if cwd is not None:
        out.append(cwd / "configs" / name)
    out.append(Path.cwd() / "configs" / name)
    out.append(CHECKOUT_CONFIGS / name)
    return list(dict.fromkeys(out))


def find_guide(run_dir: str | Path, data_name: str, explicit: str | Path | None = None) -> Path | None:
    """The guide file for a run: ``explicit`` (must exist), else the first candidate that exists, else None."""
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise UserError(f"guide={explicit}: no such file; pass a YAML guide like configs/trashnet_guide.yaml")
        return path
    return next((p for p in guide_candidates(run_dir, data_name) if p.is_file()), None)


def load_guide(path: str | Path) -> dict:
    """Read and check a guide YAML: {title, note, classes: {name: {summary, bin, accepted, prepare, not_accepted}}}."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise UserError(f"{path}: cannot read the guide ({e}); it must be a YAML file") from None
    classes = data.get("classes") if isinstance(data, dict) else None
    if not isinstance(classes, dict) or not classes:
        raise UserError(f"{path}: a guide needs a 'classes:' mapping of class name -> card "
                        f"(keys: {', '.join(CARD_KEYS)}); see configs/trashnet_guide.yaml")
    for cls, card in classes.items():
        _check_card(path, cls, card)
    return {"title": str(data.get("title") or "Guide"), "note": str(data.get("note") or ""),
            "classes": {str(k): v for k, v in classes.items()}, "path": str(path), "name": path.name}


def _check_card(path: Path, cls, card) -> None:
    """A card is a mapping of CARD_KEYS: summary and bin are text, the sections lists of text items (a list item
    ``- Keep it dry: ...`` is a YAML mapping, shown as ``{'Keep it dry': ...}`` if let through)."""
    if not isinstance(card, dict):
        raise UserError(f"{path}: the card of class {cls!r} must be a mapping with keys {', '.join(CARD_KEYS)}")
    unknown = sorted(set(card) - set(CARD_KEYS))
    if unknown:
        raise UserError(f"{path}: class {cls!r} has unknown key(s) {', '.join(unknown)}; "
                        f"valid: {', '.join(CARD_KEYS)}")
    for key in ("summary", "bin"):
        if isinstance(card.get(key), (dict, list)):
            raise UserError(f"{path}: class {cls!r}: {key} must be text, got {card[key]!r}")
    for key in SECTION_TITLES:
        items = card.get(key)
        if items is None:
            continue
        if not isinstance(items, list):
            raise UserError(f"{path}: class {cls!r}: {key} must be a list of text items ('- ...'), got {items!r}")
        for i, item in enumerate(items, 1):
            if not isinstance(item, str):
                raise UserError(f"{path}: class {cls!r}, {key} item {i} is not text but {item!r} (YAML reads "
                                "'a: b' as a mapping); quote the item or use another punctuation than ': '")


def missing_classes(guide: dict | None, classes: list[str]) -> list[str]:
    """The run's classes that have no card (so the app can say so at start-up)."""
    return [] if guide is None else [c for c in classes if c not in guide["classes"]]


def card_markdown(guide: dict | None, cls: str | None) -> str:
    """The card of one class as Markdown; empty when there is no guide or no card for the class."""
    if guide is None or cls is None or cls not in guide["classes"]:
        return ""
    card = guide["classes"][cls]
    lines = [f"### {guide['title']}: {cls}"]
    if card.get("summary"):
        lines.append(str(card["summary"]))
    if card.get("bin"):
        lines.append(f"**Which bin:** {card['bin']}")
    for key, title in SECTION_TITLES.items():
        items = card.get(key) or []
        if items:
            lines.append(f"**{title}**\n\n" + "\n".join(f"- {item}" for item in items))
    if guide["note"]:
        lines.append(f"*{guide['note']}*")
    return "\n\n".join(lines)
