"""Checkpoints: atomic saving, full training state, and loading of the original release's files.

Our snapshots are a superset of the original's `{'iteration', 'state_dict'}` format: the state dict is stored
in the original key layout, so the authors' code (and ours) can load it as an init model, and extra entries
(`training_state`, `config`) make an exact resume possible.

Method record: a checkpoint of a method other than CaGNet carries `'method'` (libs/engine/methods.py); one
without the record (the original release's, or written before the record existed) is a CaGNet checkpoint. Bare
state dicts (init weights such as DeepLab's ImageNet file) belong to no method.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Tuple

import torch

from libs.engine.methods import DEFAULT_METHOD
from libs.io import atomic_write

# One explicit rename table between the original layout (left) and ours (right). Everything else
# (Em_vis, Em_all, gen.*, dis.*) has the same name in both.
ORIGINAL_TO_OURS: Tuple[Tuple[str, str], ...] = (
    ("back.scale.layer", "back.scale.backbone.layer"),
    ("back.scale.aspp.", "back.scale.backbone.aspp."),
    ("back.scale.contextual", "back.scale.context.contextual"),
    ("back.scale.fc_1.", "back.scale.context.fc_1."),
)


def _rename(key: str, table) -> str:
    for src, dst in table:
        if key.startswith(src):
            return dst + key[len(src):]
    return key


def original_to_ours(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Rename original-layout keys (optionally `module.`-prefixed, from DataParallel) to ours."""
    out = {}
    for key, value in state_dict.items():
        key = key[len("module."):] if key.startswith("module.") else key
        out[_rename(key, ORIGINAL_TO_OURS)] = value
    return out


def ours_to_original(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Rename our keys to the original layout (order preserved, which is the original's order)."""
    reverse = tuple((dst, src) for src, dst in ORIGINAL_TO_OURS)
    return {_rename(key, reverse): value for key, value in state_dict.items()}


@dataclass
class LoadReport:
    """What a load did: the file's kind, and the model keys it did not set / file keys the model lacks."""
    source: str
    kind: str
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    iteration: int | None = None

    def summary(self) -> str:
        def listing(keys):
            return ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
        lines = [f"Loaded {self.kind} from {self.source}: {len(self.missing)} missing, "
                 f"{len(self.unexpected)} unexpected keys"]
        if self.missing:
            lines.append(f"  missing (keep their initial values): {listing(self.missing)}")
        if self.unexpected:
            lines.append(f"  unexpected (ignored): {listing(self.unexpected)}")
        return "\n".join(lines)


def read_checkpoint(path: str) -> dict:
    """torch.load on CPU with a clear error for a missing or unreadable file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # re-raised with the file name
        raise ValueError(f"checkpoint {path!r} could not be read by torch.load: {exc}") from exc


def checkpoint_method(checkpoint) -> str | None:
    """The method that wrote a checkpoint: its `method` record, else its config's `method`, else cagnet; None for
    a bare state dict (init weights belong to no method)."""
    if not isinstance(checkpoint, Mapping) or "state_dict" not in checkpoint:
        return None
    if checkpoint.get("method"):
        return str(checkpoint["method"])
    config = checkpoint.get("config")
    if isinstance(config, Mapping) and config.get("method"):
        return str(config["method"])
    return DEFAULT_METHOD


def check_method(checkpoint, method: str, source: str, what: str) -> None:
    """Raise ValueError when `checkpoint` (a full one) was written by another method than `method`."""
    found = checkpoint_method(checkpoint)
    if found is not None and found != method:
        raise ValueError(f"{what}: {source} is a {found} checkpoint, but the config has method {method}; use a "
                         f"config with method: {found} (configs/{found}_<dataset>.yaml or configs/<dataset>.yaml "
                         "for cagnet)")


def load_model_weights(model: torch.nn.Module, checkpoint, source: str = "<memory>",
                       strict: bool | None = None) -> LoadReport:
    """Load a CaGNet checkpoint (`{'iteration', 'state_dict', ...}`, strict) or a bare state dict such as
    the DeepLab init weights (non-strict: what matches loads, the rest is reported).

    strict=False loads a full checkpoint like a bare state dict (another method's checkpoint as init weights,
    e.g. an SPNet backbone for CaGNet); None: strict for full checkpoints.
    Faithful to the original: a full checkpoint's Em_vis/Em_all replace the tables built from the word
    vectors. A tensor whose shape differs from the model's is an error naming every such key.
    """
    if isinstance(checkpoint, str):
        source = checkpoint
        checkpoint = read_checkpoint(checkpoint)
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"{source}: expected a state dict or a dict with 'state_dict', got "
                         f"{type(checkpoint).__name__}")
    full = "state_dict" in checkpoint
    strict = full if strict is None else (strict and full)
    weights = checkpoint["state_dict"] if full else checkpoint
    if not all(isinstance(v, torch.Tensor) for v in weights.values()):
        bad = [k for k, v in weights.items() if not isinstance(v, torch.Tensor)][:5]
        raise ValueError(f"{source}: entries {bad} are not tensors; this is not a model state dict")
    weights = original_to_ours(weights)
    own = model.state_dict()
    mismatched = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                  for k, v in weights.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if mismatched:
        raise ValueError(f"{source}: {len(mismatched)} tensors have a different shape than this model "
                         f"(wrong dataset config or model size?):\n  " + "\n  ".join(mismatched))
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    method = checkpoint_method(checkpoint)
    name = "CaGNet" if method == DEFAULT_METHOD else method
    kind = f"{name} checkpoint" if strict else (f"{name} checkpoint as init weights" if full else "bare state dict")
    if strict and (missing or unexpected):
        report = LoadReport(source, kind, missing, unexpected)
        raise ValueError(f"{source}: a {name} checkpoint must match the model exactly.\n{report.summary()}")
    model.load_state_dict({k: v for k, v in weights.items() if k in own}, strict=False)
    iteration = checkpoint.get("iteration") if full else None
    return LoadReport(source, kind, missing, unexpected, iteration)


def atomic_save(obj, path: str) -> None:
    """torch.save through a temporary file and a rename: a crash never leaves half a checkpoint."""
    atomic_write(path, lambda handle: torch.save(obj, handle))


def snapshot(model: torch.nn.Module, iteration: int, training_state: dict | None = None,
             config: dict | None = None, method: str | None = None) -> dict:
    """The checkpoint dict: the original's two keys plus, optionally, what an exact resume needs and the method
    that wrote it (the record `checkpoint_method` reads)."""
    state = {k: v.detach().cpu() for k, v in ours_to_original(model.state_dict()).items()}
    out = {"iteration": int(iteration), "state_dict": state}
    if method is not None:
        out["method"] = str(method)
    if training_state is not None:
        out["training_state"] = training_state
    if config is not None:
        out["config"] = config
    return out


def export_original(checkpoint: Mapping, iteration: int | None = None) -> dict:
    """Strip a checkpoint to exactly the original release's layout: {'iteration', 'state_dict'}; another method's
    checkpoint keeps its `method` record (so it is still refused as a CaGNet model)."""
    if "state_dict" not in checkpoint:
        raise ValueError("export: the input has no 'state_dict' entry; it is not a CaGNet checkpoint")
    weights = ours_to_original(original_to_ours(checkpoint["state_dict"]))
    it = checkpoint.get("iteration", 0) if iteration is None else iteration
    out = {"iteration": int(it), "state_dict": dict(weights)}
    method = checkpoint_method(checkpoint)
    if method != DEFAULT_METHOD:
        out["method"] = method
    return out
