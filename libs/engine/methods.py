"""The method table: the one place a method plugs in (config key `method`, default `cagnet`).

Each entry names a trainer class (libs/engine/trainers/): it builds the method's model from the config and trains
it. Everything else — data, splits, embeddings, evaluation, checkpoints, resume, logging, torchrun, the output
layout — is shared by every method. The table holds import paths, not classes, so the config schema can offer its
names as the choices of `method` without importing the trainers (which read configs: an import cycle).
"""
from __future__ import annotations

import importlib
from typing import Dict, Type

METHODS: Dict[str, str] = {
    "cagnet": "libs.engine.trainers.cagnet:CaGNetTrainer",
    "spnet": "libs.engine.trainers.spnet:SPNetTrainer",
    "zs3net": "libs.engine.trainers.zs3net:ZS3NetTrainer",
}
METHOD_NAMES = tuple(METHODS)
# Checkpoints without a method record (the original release's, and this code's before the record existed).
DEFAULT_METHOD = "cagnet"


def get_method(name: str) -> Type:
    """The trainer class of method `name` (a libs.engine.trainers.base.Trainer subclass)."""
    if name not in METHODS:
        raise ValueError(f"method {name!r} is unknown; expected one of {', '.join(METHODS)}")
    module, cls = METHODS[name].split(":")
    return getattr(importlib.import_module(module), cls)
