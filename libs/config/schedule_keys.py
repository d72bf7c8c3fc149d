"""The config keys a training schedule reads: its iteration budget and each network's learning rate.

`ITER_MAX*` and `<net>_opt.lr*` are optional in the schema because each config serves some schedules only; these
functions read them for the active `--schedule` and name the config meant for it when they are missing.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

from libs.config.schema import _KEYS, NETS
from libs.config.validate import Config, ConfigError, _describe
from libs.engine.methods import DEFAULT_METHOD, get_method
from libs.engine.schedules import SCHEDULES, get_schedule

# Datasets whose configs ship in configs/, so an error can name the file meant for a schedule.
_SHIPPED_DATASETS = ("voc12", "context", "cocostuff")
# The original release names its self-training configs by these short names (configs_st_voc.yaml, ...);
# configs_st[_transfer]_voc12.yaml and *_cocostuff.yaml are aliases of them.
_ST_CONFIG_NAME = {"voc12": "voc", "context": "context", "cocostuff": "coco"}


def _schedule_key_paths(schedule: str, nets: Sequence[str]) -> list:
    spec = get_schedule(schedule)
    return [spec.iter_max_key] + [spec.lr_key(net) for net in nets]


def _schedule_error(cfg: Config, schedule: str, missing: list, nets: Sequence[str] = NETS) -> ConfigError:
    source = cfg.source
    supported = [s for s in SCHEDULES if all(cfg.value(p) is not None for p in _schedule_key_paths(s, nets))]
    text = f"{_describe(source)} has no {', '.join(missing)}, needed by --schedule {schedule}"
    if supported:
        text += f" (this file supports --schedule {', '.join(supported)})"
    dataset = cfg.get("dataset")
    if dataset in _SHIPPED_DATASETS:
        suggestion = get_schedule(schedule).shipped_config.format(ds=dataset, st=_ST_CONFIG_NAME[dataset])
        nearby = os.path.join(os.path.dirname(source), suggestion) if source else ""
        suggestion = nearby if nearby and os.path.isfile(nearby) else f"configs/{suggestion}"
        if not source or os.path.basename(source) != os.path.basename(suggestion):
            text += f"; use {suggestion}"
    return ConfigError(text)


def check_schedule_keys(cfg: Config, schedule: str, nets: Optional[Sequence[str]] = None) -> None:
    """Raise ConfigError when the keys that `--schedule schedule` reads (ITER_MAX*, <net>_opt.lr* of the
    method's networks; default: the networks of the config's method) are missing."""
    if nets is None:
        nets = get_method(cfg.get("method", DEFAULT_METHOD)).networks
    missing = [p for p in _schedule_key_paths(schedule, nets) if cfg.value(p) is None]
    if missing:
        raise _schedule_error(cfg, schedule, missing, nets)


def iter_max(cfg: Config, schedule: str) -> int:
    """Iteration budget of the schedule: ITER_MAX, ITER_MAX_TRANSFER, ITER_MAX_ST or ITER_MAX_ST_TRANSFER."""
    path = get_schedule(schedule).iter_max_key
    value = cfg.value(path)
    if value is None:
        raise _schedule_error(cfg, schedule, [path])
    return value


def learning_rate(cfg: Config, net: str, schedule: str) -> float:
    """Base learning rate of `net` (e.g. 'dis', 'gen', 'back') for the schedule: <net>_opt.lr{,_transfer,...}."""
    known = [key[:-len("_opt.OPTIMIZER")] for key in _KEYS if key.endswith("_opt.OPTIMIZER")]
    if net not in known:
        raise ValueError(f"learning_rate: net {net!r} is unknown; expected one of {', '.join(known)}")
    path = get_schedule(schedule).lr_key(net)
    value = cfg.value(path)
    if value is None:
        raise _schedule_error(cfg, schedule, [path])
    return value
