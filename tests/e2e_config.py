"""Tiny configs for end-to-end runs through train.py: the shipped configs with a tiny model and dataset."""
import os
import subprocess
import sys

import yaml

from libs.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY_MODEL = {
    "back.n_classes": 16, "gen.in_dim_mlp": 616, "gen.out_dim_mlp": 16, "dis.in_dim_fc": 16,
    "dis.out_dim_fc": 24, "gen.hidden_dims_mlp": [24, 20], "gen.dropout_mlp": [0.1, 0.3],
    "back.n_blocks": [1, 1, 1, 1], "back.base_width": 4, "back.aspp_rates": [1, 2, 3, 4],
    "back.context_width": 8,
}


def _set(data, dotted, value):
    *parents, leaf = dotted.split(".")
    for p in parents:
        data = data.setdefault(p, {})
    data[leaf] = value


def write_tiny_config(path, base, toy, save_path, **changes):
    """configs/<base>.yaml, pointed at the toy dataset and shrunk; `changes` use dotted keys with '__' for '.'."""
    data = load_config(os.path.join(ROOT, "configs", base + ".yaml")).to_dict()
    settings = {
        **TINY_MODEL, "ROOT": toy.root, "datadir": toy.datadir, "dataset": toy.name, "save_path": save_path,
        "num_unseen": len(toy.unseen), "dis.out_dim_cls": len(toy.seen) + len(toy.unseen) + 1,
        "IMAGE.SIZE.BASE": 65, "IMAGE.SIZE.TRAIN": 49, "BATCH_SIZE.TRAIN": 2, "BATCH_SIZE.TEST": 2,
        "NUM_WORKERS": 0, "display_interval": 1, "log_interval": 2, "init_model": "none",
    }
    settings.update({k.replace("__", "."): v for k, v in changes.items()})
    for key, value in settings.items():
        _set(data, key, value)
    with open(path, "w") as handle:
        yaml.safe_dump(data, handle, sort_keys=False)
    return path


def run_train(*args, ok=True, timeout=300):
    """`python train.py --device cpu ARGS` in a subprocess from the repository root; with ok, rc 0 is asserted."""
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--device", "cpu", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=timeout)
    if ok:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc
