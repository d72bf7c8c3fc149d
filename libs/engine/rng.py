"""The run's global random state: seeding at start-up, and the states a checkpoint saves and a resume restores.

The saved states are plain types and tensors only (python's state as a list, numpy's key as an int64 tensor), so
a checkpoint loads with torch.load(weights_only=True). States written by earlier versions (tuples, numpy arrays)
still restore.
"""
import random
from typing import Optional

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state(device: Optional[torch.device] = None) -> dict:
    """python, numpy, torch and (on a CUDA device) that device's generator state."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [int(version), [int(v) for v in internal], gauss],
             "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "torch": torch.get_rng_state()}
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: Optional[torch.device] = None) -> None:
    python = state["python"]
    random.setstate((int(python[0]), tuple(int(v) for v in python[1]), python[2]))
    numpy = state["numpy"]
    if isinstance(numpy, dict):
        keys = numpy["keys"].numpy() if isinstance(numpy["keys"], torch.Tensor) else np.asarray(numpy["keys"])
        np.random.set_state((numpy["kind"], keys.astype(np.uint32), int(numpy["pos"]), int(numpy["has_gauss"]),
                             float(numpy["cached_gaussian"])))
    else:                                           # earlier versions: numpy's own tuple
        np.random.set_state(numpy)
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is None or not torch.cuda.is_available():
        return
    if isinstance(cuda, torch.Tensor):
        torch.cuda.set_rng_state(cuda, device if device is not None and device.type == "cuda" else "cuda")
    else:                                           # earlier versions: every device's state
        torch.cuda.set_rng_state_all(cuda)
