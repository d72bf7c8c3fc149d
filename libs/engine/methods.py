"""The method table: the one place a method plugs in (config key `method`, default `cagnet`).

Each entry is a trainer class (libs/engine/trainers/): it builds the method's model from the config and trains
it. Everything else — data, splits, embeddings, evaluation, checkpoints, resume, logging, torchrun, the output
layout — is shared by every method.
"""
from typing import Dict, Type

from libs.engine.trainers.base import Trainer
from libs.engine.trainers.cagnet import CaGNetTrainer
from libs.engine.trainers.zs3net import ZS3NetTrainer

METHODS: Dict[str, Type[Trainer]] = {
    "cagnet": CaGNetTrainer,
    "zs3net": ZS3NetTrainer,
}


def get_method(name: str) -> Type[Trainer]:
    if name not in METHODS:
        raise ValueError(f"method {name!r} is unknown; expected one of {', '.join(METHODS)}")
    return METHODS[name]
