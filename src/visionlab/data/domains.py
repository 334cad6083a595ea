"""Domain-aware image folders for domain generalization: ``<root>/<domain>/<class>/*.jpg`` (PACS: art_painting,
cartoon, photo, sketch x 7 classes).

Leave-domains-out splits: ``data.target_domains`` are the test split (all their images, never seen in training or
selection); every other domain (or ``data.source_domains``) is split per domain into train and a seeded, stratified
``data.val_fraction`` validation hold-out, so model selection uses source domains only. Every sample carries its
domain index (``ImageSet.domains``; names in ``Splits.domains``), in the order of the sorted domain folders.
"""
from __future__ import annotations

import numpy as np

from pathlib import Path

from ..config import data_root
from ..utils import ConfigError, UserError
from . import cache
from .base import ImageSet
from .decode import preprocess_dict
from .folder import DEFAULT_IMAGE_SIZE, Listing, _decode_all, _visible_dirs, scan_folder
from .split import holdout, limit_indices, make_splits, missing_data_error


def _listings(root: Path) -> tuple[list[str], dict[str, Listing]]:
    domains = _visible_dirs(root)
    if len(domains) < 2:
        raise UserError(f"{root}: expected one folder per domain, <root>/<domain>/<class>/*.jpg (at least two "
                        f"domains), found {domains or 'none'}")
    return domains, {d: scan_folder(root / d) for d in domains}


def _chosen(asked: list, domains: list[str], key: str) -> list[str]:
    unknown = [d for d in asked if d not in domains]
    if unknown:
        raise ConfigError(f"{key}={asked}: no domain {unknown[0]!r}; this dataset has {domains}")
    return list(asked)


def domain_splits(cfg, name: str, root: Path, default_size: int | None = None):
    """Splits of a domain-folder dataset (see module docstring)."""
    if not root.is_dir():
        raise missing_data_error(name, root, ["<domain>/<class>/*.jpg"], name, downloadable=False)
    domains, listings = _listings(root)
    targets = _chosen(cfg.target_domains, domains, "data.target_domains")
    if not targets:
        raise ConfigError(f"data.name={name}: choose the held-out domain(s) with data.target_domains=[{domains[-1]}] "
                          f"(domains: {', '.join(domains)}); `visionlab dg` runs every leave-one-domain-out split")
    sources = _chosen(cfg.source_domains, domains, "data.source_domains") or [d for d in domains if d not in targets]
    if set(sources) & set(targets):
        raise ConfigError(f"data.source_domains={sources} and data.target_domains={targets} overlap: a held-out "
                          "domain must never be trained on")
    classes = sorted({c for d in sources + targets for c in listings[d].classes})
    pre = preprocess_dict(cfg)
    parts = {"train": [], "val": [], "test": []}
    skipped = []
    for d in sources + targets:
        listing = listings[d]
        nbytes = len(listing.entries) * (pre["image_size"] or 256) ** 2 * 3
        if not cache.want_memory(cfg, nbytes):
            raise UserError(f"data.name={name} decodes its images in memory: drop data.in_memory=false")
        images, ok, bad, pre_d = _decode_all(cfg, f"{name}-{d}", listing, pre,
                                               default_size or DEFAULT_IMAGE_SIZE)
        skipped += bad
        remap = np.array([classes.index(c) for c in listing.classes], np.int64)
        labels = remap[np.array([listing.entries[i].label for i in ok], np.int64)]
        names = [f"{d}/{listing.entries[i].rel}" for i in ok]
        dom = np.full(len(ok), domains.index(d), np.int64)
        whole = ImageSet(labels=labels, images=images, names=names, domains=dom)
        if cfg.limit:
            whole = whole.subset(limit_indices(labels, cfg.limit, cfg.split_seed))
        if d in targets:
            parts["test"].append(whole)
            continue
        tr, va = holdout(whole.labels, cfg.val_fraction, cfg.split_seed)
        parts["train"].append(whole.subset(tr))
        if va is not None:
            parts["val"].append(whole.subset(va))
        pre = pre_d
    sets = {k: ImageSet.concat(v) if v else None for k, v in parts.items()}
    splits = make_splits(sets["train"], sets["val"], sets["test"], classes, preprocess=pre, skipped=skipped,
                         source=f"{name}: domain folders in {root.resolve()}; trained on {', '.join(sources)}, "
                                f"held out {', '.join(targets)}",
                         manifest=[{"file": n, "label": classes[y], "split": k, "domain": domains[d]}
                                   for k, s in sets.items() if s is not None
                                   for n, y, d in zip(s.names, s.labels, s.domains)])
    splits.domains = domains
    return splits


def build_pacs(cfg, default_size: int | None = None):
    """PACS (Li et al. 2017): 4 domains x 7 classes, 9,991 images at 128 px in $VISIONLAB_DATA/pacs."""
    return domain_splits(cfg, "pacs", data_root(cfg, "pacs"), default_size)


def build_domain_folder(cfg, default_size: int | None = None):
    """A user's <root>/<domain>/<class>/ folders at data.root."""
    if not cfg.root:
        raise UserError("data.name=domain_folder needs data.root=PATH: a folder of ROOT/<domain>/<class>/*.jpg")
    return domain_splits(cfg, "domain_folder", Path(cfg.root).expanduser(), default_size)


def domain_names(cfg_data) -> list[str]:
    """The sorted domain folder names of a domain dataset (data.name=pacs, or domain_folder at data.root), read
    without decoding an image: what data.target_domains may name, and what `visionlab dg` leaves out in turn."""
    if cfg_data.name == "pacs":
        name, root = "pacs", data_root(cfg_data, "pacs")
    elif cfg_data.name == "domain_folder":
        if not cfg_data.root:
            raise UserError("data.name=domain_folder needs data.root=PATH: a folder of ROOT/<domain>/<class>/*.jpg")
        name, root = "domain_folder", Path(cfg_data.root).expanduser()
    else:
        raise ConfigError(f"data.name={cfg_data.name} has no domains: use a domain dataset (data.name=pacs, or "
                          "domain_folder with data.root=<root>/<domain>/<class>/*.jpg)")
    if not root.is_dir():
        raise missing_data_error(name, root, ["<domain>/<class>/*.jpg"], name, downloadable=False)
    return _listings(root)[0]
