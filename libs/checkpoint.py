"""Checkpoints: atomic saving, full training state, and safe loading of ours and the original release's files.

Our snapshots are a superset of the original's `{'iteration', 'state_dict'}` format: the state dict is stored
in the original key layout, so the authors' code (and ours) can load it as an init model, and extra entries
(`training_state`, `config`) make an exact resume possible. They hold tensors and plain types only, so every
file is read with `torch.load(weights_only=True)`: a file that needs full unpickling (which can run any code) is
refused unless the user opts in (`--trust_checkpoint`, `trust_checkpoints`). Every file read is logged with its
sha256, so a run records exactly what it started from.

Method record: a checkpoint of a method other than CaGNet carries `'method'` (libs/engine/methods.py); one
without the record (the original release's, or written before the record existed) is a CaGNet checkpoint. Bare
state dicts (init weights such as DeepLab's ImageNet file) belong to no method.
"""
from __future__ import annotations

import os
import pickle
import re
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Tuple

import torch

from libs.engine.methods import DEFAULT_METHOD
from libs.io import atomic_write, ensure_writable_dir, file_sha256, log, remove_stale_temporaries

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


class UnsafeCheckpointError(ValueError):
    """A checkpoint that only full unpickling can read (it could run arbitrary code), refused without opt-in."""


# The process-wide opt-in into full unpickling: train.py's (and the tools') --trust_checkpoint sets it.
_TRUST_CHECKPOINTS = False
TRUST_FLAG = "--trust_checkpoint"


def trust_checkpoints(trust: bool = True) -> None:
    """Allow (True) or refuse (False, the default) checkpoints that need full unpickling, for this process."""
    global _TRUST_CHECKPOINTS
    _TRUST_CHECKPOINTS = bool(trust)


def _weights_only_detail(exc: Exception) -> Optional[str]:
    """The reason torch's safe unpickler gave, or None when `exc` is not a safe-unpickler refusal."""
    text = str(exc)
    if not isinstance(exc, pickle.UnpicklingError) or "Weights only load failed" not in text:
        return None
    match = re.search(r"WeightsUnpickler error:\s*(.*)", text)
    return match.group(1).strip().splitlines()[0] if match else "refused by the safe unpickler"


def read_checkpoint(path: str, trust: Optional[bool] = None) -> dict:
    """torch.load(weights_only=True) on CPU: tensors, containers and plain values only, so loading a file cannot
    run code. A file that needs more is refused, naming what it refers to, unless `trust` (default: the
    process-wide `trust_checkpoints` setting). Clear errors for a missing or unreadable file; the sha256 of every
    file read is logged."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    log.info("reading %s (sha256 %s)", path, file_sha256(path))
    trust = _TRUST_CHECKPOINTS if trust is None else trust
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        detail = _weights_only_detail(exc)
        if detail is None:      # damaged, truncated or not a torch file: re-raised with the file name
            raise ValueError(f"checkpoint {path!r} could not be read by torch.load: {exc}") from exc
        if not trust:
            found = re.search(r"GLOBAL ([\w.]+)", detail)
            if found:
                raise UnsafeCheckpointError(
                    f"checkpoint {path!r} refused: it is not only tensors and plain values; it refers to "
                    f"{found.group(1)}, which only full unpickling can load, and full unpickling can run "
                    f"arbitrary code on this machine (a downloaded file can do anything you can). If you trust "
                    f"where the file comes from (e.g. a snapshot written by an earlier version of this code), "
                    f"pass {TRUST_FLAG}.") from None
            raise ValueError(f"checkpoint {path!r} could not be read safely ({detail}): it is damaged, not a "
                             f"torch checkpoint, or needs full unpickling, which can run arbitrary code; only "
                             f"if you trust its source, pass {TRUST_FLAG}") from None
    found = re.search(r"GLOBAL ([\w.]+)", detail)
    log.warning("%s: loading %s with full unpickling (it refers to %s); it could run code", TRUST_FLAG, path,
                found.group(1) if found else detail)
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ValueError(f"checkpoint {path!r} could not be read by torch.load: {exc}") from exc


# Model tensors that predictions do not need from a file: the word-embedding tables (rebuilt from the dataset's
# word vectors) and the generator. Every method predicts from the rest: CaGNet and ZS3Net a classifier on the
# backbone's features, SPNet the backbone's features against Em_all.
_EMBEDDING_TABLES = ("Em_vis.", "Em_all.")
_NOT_NEEDED_TO_PREDICT = (*_EMBEDDING_TABLES, "gen.")
PURPOSES = ("train", "evaluate")


def _listing(keys: List[str], n: int = 5) -> str:
    return ", ".join(keys[:n]) + (", ..." if len(keys) > n else "")


def _check_complete(report: LoadReport, own: List[str], purpose: Optional[str]) -> None:
    """A file that shares no key with the model is an error; for `evaluate` so is any tensor prediction uses
    that the file leaves unset; for `train` a file that leaves most tensors unset is a warning."""
    shared = len(own) - len(report.missing)
    if shared == 0:
        count = len(report.unexpected)
        raise ValueError(f"{report.source}: the {report.kind} shares no key with the model ({count} "
                         f"key{'s' if count != 1 else ''} such as {_listing(report.unexpected, 3)}; the model has "
                         f"{len(own)} such as {_listing(own, 3)}): it is not a state dict of this model")
    if purpose == "evaluate":
        needed = [k for k in report.missing if not k.startswith(_NOT_NEEDED_TO_PREDICT)]
        if needed:
            raise ValueError(f"{report.source}: {len(needed)} tensors that predictions use are not in the file "
                             f"({_listing(needed)}); evaluating would score random weights. Evaluate a complete "
                             f"model (a full checkpoint such as *_ourbest.pth or a training snapshot)")
    elif purpose == "train":
        # the embedding tables come from the word vectors, not from an init file: they are not counted
        tensors = [k for k in own if not k.startswith(_EMBEDDING_TABLES)]
        unset = [k for k in report.missing if not k.startswith(_EMBEDDING_TABLES)]
        if len(unset) > len(tensors) / 2:
            log.warning("%s sets only %d of the model's %d tensors (word-embedding tables not counted); the other "
                        "%d (%s) keep their initialisation (config key init)", report.source,
                        len(tensors) - len(unset), len(tensors), len(unset), _listing(unset))


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
                       strict: bool | None = None, purpose: Optional[str] = None) -> LoadReport:
    """Load a CaGNet checkpoint (`{'iteration', 'state_dict', ...}`, strict) or a bare state dict such as
    the DeepLab init weights (non-strict: what matches loads, the rest is reported).

    strict=False loads a full checkpoint like a bare state dict (another method's checkpoint as init weights,
    e.g. an SPNet backbone for CaGNet); None: strict for full checkpoints.
    Faithful to the original: a full checkpoint's Em_vis/Em_all replace the tables built from the word
    vectors. A tensor whose shape differs from the model's is an error naming every such key, and so is a
    state dict sharing no key with the model. `purpose` "evaluate" (--val, prediction) also refuses a file that
    leaves a tensor prediction uses unset; "train" warns when it leaves most of them unset.
    """
    if purpose not in (None, *PURPOSES):
        raise ValueError(f"purpose must be one of {PURPOSES}, got {purpose!r}")
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
    _check_complete(LoadReport(source, kind, missing, unexpected), list(own), purpose)
    model.load_state_dict({k: v for k, v in weights.items() if k in own}, strict=False)
    iteration = checkpoint.get("iteration") if full else None
    return LoadReport(source, kind, missing, unexpected, iteration)


def atomic_save(obj, path: str) -> None:
    """torch.save through a temporary file and a rename: a crash never leaves half a checkpoint, and a failed
    write (full disk) is an OutputError naming `path` that leaves the previous file and no temporary file."""
    atomic_write(path, lambda handle: torch.save(obj, handle))


SNAPSHOT_NAME = re.compile(r"^(\d{8})\.pth$")


def snapshot_iterations(folder: str) -> List[int]:
    """Iterations of the `%08d.pth` snapshots in `folder`, ascending."""
    if not os.path.isdir(folder):
        return []
    return sorted(int(m.group(1)) for m in map(SNAPSHOT_NAME.match, os.listdir(folder)) if m)


def prepare_snapshot_dir(folder: str) -> None:
    """Before training: the snapshot folder exists and is writable (else an OutputError naming it), and the
    temporary files of saves killed half-way are removed (logged)."""
    ensure_writable_dir(folder, "checkpoint folder")
    remove_stale_temporaries(folder)


def save_checkpoint(obj, path: str, keep_last: int = 0) -> List[str]:
    """atomic_save, then, with keep_last = N > 0, delete the oldest `%08d.pth` snapshots beside `path` so that N
    remain among those up to this one (config key keep_last; 0 keeps all, as the original). Snapshots of later
    iterations (from a run resumed at an earlier one) are left alone: this run overwrites them as it goes.
    Returns the deleted paths."""
    atomic_save(obj, path)
    match = SNAPSHOT_NAME.match(os.path.basename(path))
    if keep_last <= 0 or match is None:
        return []
    folder, current = os.path.dirname(os.path.abspath(path)), int(match.group(1))
    older = [it for it in snapshot_iterations(folder) if it < current]
    removed = []
    for it in older[:max(0, len(older) - (keep_last - 1))]:
        old = os.path.join(folder, "%08d.pth" % it)
        os.remove(old)
        removed.append(old)
    if removed:
        log.info("keep_last %d: removed %s", keep_last, ", ".join(os.path.basename(p) for p in removed))
    return removed


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
