"""Load, validate and save the YAML training config (original CaGNet key names and nesting, method-spec §9).

One schema table (`SCHEMA`) lists every key: its dotted path, type, whether it is required, its default and a
one-line meaning. `load_config` parses a file, rejects unknown keys (suggesting the closest known one), missing
required keys and wrongly typed values, fills the defaults of the new optional keys and returns a read-only
`Config`. Values that depend on the training schedule (`ITER_MAX*`, `<net>_opt.lr*`) are optional in the schema;
`check_schedule_keys`, `iter_max` and `learning_rate` read them for the active `--schedule`.

Normalisations (the validated value differs from the file's spelling):
* float keys accept numeric strings, because PyYAML (YAML 1.1) reads `5e-05` (no dot) as a string;
* int keys accept integral floats and numeric strings (`4e4` -> 40000);
* `update_back` is `t`/`f` in the original files; booleans are accepted too and the value becomes a Python bool
  (a bare string `'f'` would be truthy, a trap the normalisation removes); `save_config` writes `t`/`f` back;
* lists become tuples and sections become read-only `Config` mappings.
"""
from __future__ import annotations

import argparse
import difflib
import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from libs.fileio import atomic_write

__all__ = [
    "SCHEMA", "SCHEDULE_SUFFIX", "SCHEDULES", "NETS", "EMBEDDING_DIMS", "Key", "Config", "ConfigError",
    "ConfigFileNotFoundError", "load_config", "validate_config", "save_config", "check_schedule_keys", "iter_max",
    "learning_rate", "config_reference_markdown", "write_config_reference",
]

SCHEDULE_SUFFIX = {"step1": "", "mixed": "_transfer", "st": "_st", "st_mixed": "_st_transfer"}
SCHEDULES = tuple(SCHEDULE_SUFFIX)
NETS = ("dis", "gen", "back")
EMBEDDING_DIMS = {"word2vec": 300, "fasttext": 300, "fastnvec": 600}
# Which shipped config each schedule is meant for, to point the user at it in error messages. The self-training
# configs carry the original release's names ({st}: voc, context, coco); configs_st[_transfer]_voc12.yaml and
# configs_st[_transfer]_cocostuff.yaml are aliases of them.
_SCHEDULE_CONFIG = {"step1": "{ds}.yaml", "mixed": "{ds}_finetune.yaml", "st": "configs_st_{st}.yaml",
                    "st_mixed": "configs_st_transfer_{st}.yaml"}
_ST_CONFIG_NAME = {"voc12": "voc", "context": "context", "cocostuff": "coco"}
_SHIPPED_DATASETS = ("voc12", "context", "cocostuff")

_NO_DEFAULT = object()


class ConfigError(ValueError):
    """A config file or value is invalid; the message names the file, the key, the value and what was expected."""


class ConfigFileNotFoundError(ConfigError, FileNotFoundError):
    """The config file does not exist (both a ValueError and a FileNotFoundError)."""


@dataclass(frozen=True)
class Key:
    """One schema row. kind: int, float, str, bool, flag ('t'/'f' or bool), choice, int_list, float_list, any."""
    path: str
    kind: str
    doc: str
    required: bool = False
    default: Any = _NO_DEFAULT
    choices: tuple = ()
    minimum: float | None = None
    maximum: float | None = None
    length: int | None = None
    status: str = ""          # '' (original key), 'new', 'dead', 'schedule', 'policy'
    policies: tuple = ()      # for status 'policy': the lr_policy values that need this key

    @property
    def has_default(self) -> bool:
        return self.default is not _NO_DEFAULT


def _req(path, kind, doc, **kw):
    return Key(path, kind, doc, required=True, **kw)


def _new(path, kind, default, doc, **kw):
    return Key(path, kind, doc, default=default, status="new", **kw)


def _dead(path, doc):
    return Key(path, "any", f"No effect (kept so original configs load): {doc}", status="dead")


def _sched(path, kind, doc, **kw):
    return Key(path, kind, doc, status="schedule", **kw)


def _policy(path, kind, doc, policies, **kw):
    return Key(path, kind, doc, status="policy", policies=policies, **kw)


def _optimizer_keys(net: str, what: str, decay: tuple) -> list:
    keys = [_req(f"{net}_opt.OPTIMIZER", "choice", f"Optimizer of the {what}.", choices=("sgd", "adam", "rmsprop"))]
    runs = {"": "step1", "_transfer": "mixed", "_st": "st", "_st_transfer": "st_mixed"}
    for suffix, schedule in runs.items():
        keys.append(_sched(f"{net}_opt.lr{suffix}", "float",
                           f"Base learning rate of the {what} under --schedule {schedule}.", minimum=0.0))
    keys.extend(decay)
    return keys


def _scheduler_keys(net: str, what: str) -> list:
    return [
        _req(f"{net}_scheduler.lr_policy", "choice",
             f"Learning-rate policy of the {what}: poly (per-iteration polynomial decay), lambda (constant until "
             "start_decay_iter, then x gamma every step_size), step (StepLR) or constant.",
             choices=("poly", "lambda", "constant", "step")),
        _policy(f"{net}_scheduler.power", "float", "Exponent of the poly decay (1 - k/max)^power.", ("poly",),
                minimum=0.0),
        _policy(f"{net}_scheduler.lr_decay_iter", "int",
                "Poly policy updates the rate only every this many scheduler steps.", ("poly",), minimum=1),
        _policy(f"{net}_scheduler.start_decay_iter", "int",
                "Lambda policy: the rate stays at its base value for this many scheduler steps.", ("lambda",),
                minimum=0),
        _policy(f"{net}_scheduler.step_size", "int",
                "Lambda/step policy: multiply the rate by gamma every this many scheduler steps.", ("lambda", "step"),
                minimum=1),
        _policy(f"{net}_scheduler.gamma", "float", "Lambda/step policy: decay factor.", ("lambda", "step"),
                minimum=0.0),
    ]


_LAMBDAS = [
    ("lambda_D_gp", "Weight of the gradient penalty in the classifier's GAN loss (used only by gan_type wgan-gp)."),
    ("lambda_D_cls_real", "Classifier loss weight of the real-feature classification (step 1)."),
    ("lambda_D_cls_fake", "Classifier loss weight of the fake-feature classification (step 1)."),
    ("lambda_D_cls_fake_transfer", "Classifier loss weight of the fake-feature classification (step 2)."),
    ("lambda_B_KLD", "Backbone loss weight of the contextual latent code's KL divergence."),
    ("lambda_B_cls", "Backbone loss weight of the real-feature classification."),
    ("lambda_G_Content", "Generator loss weight of the content (MMD) loss."),
    ("lambda_G_GAN", "Generator loss weight of the adversarial loss."),
    ("lambda_G_cls", "Generator loss weight of the fake-feature classification (step 1)."),
    ("lambda_G_cls_transfer", "Generator loss weight of the fake-feature classification (step 2)."),
]

SCHEMA: tuple = tuple([
    _req("BATCH_SIZE.TRAIN", "int", "Training batch size.", minimum=1),
    _req("BATCH_SIZE.TEST", "int", "Evaluation batch size.", minimum=1),
    _req("SPLIT.TRAIN", "choice", "Training split; `train` reads split/train_list.npy (the only value).",
         choices=("train",)),
    _req("SPLIT.TEST", "choice", "Test split; `novel` reads split/test_list.npy, scored on seen + unseen classes "
         "(the only value).", choices=("novel",)),
    _req("NUM_WORKERS", "int", "DataLoader worker processes.", minimum=0),
    _req("DATAMODE", "choice", "Loader class; the zero-shot loader is the only one.", choices=("LoaderZLS",)),
    _req("IMAGE.MEAN.R", "float", "Red channel mean subtracted from the image (no std division)."),
    _req("IMAGE.MEAN.G", "float", "Green channel mean subtracted from the image."),
    _req("IMAGE.MEAN.B", "float", "Blue channel mean subtracted from the image."),
    _req("IMAGE.SIZE.TRAIN", "int", "Side of the square random training crop.", minimum=1),
    Key("IMAGE.SIZE.TEST", "any", "No effect (kept so original configs load): the original passes it to the test "
        "loader as a crop size, but the test loader never crops (test input is IMAGE.SIZE.BASE, 513).",
        status="dead"),
    _new("IMAGE.SIZE.BASE", "int", 513, "Side every image and label is first resized to (warped to a square when "
         "WARP_IMAGE, else longer side); test images are evaluated at this size.", minimum=1),
    _req("WARP_IMAGE", "bool", "True: resize to IMAGE.SIZE.BASE x IMAGE.SIZE.BASE ignoring aspect ratio; False: "
         "longer side to IMAGE.SIZE.BASE."),
    _new("SCALE_RANGE", "float_list", (0.5, 1.5), "Training scale augmentation: factor drawn uniformly from "
         "[low, high] after the base resize.", length=2, minimum=0.0),
    _req("ROOT", "str", "Folder with images/<subdir>/ and annotations/<subdir>/."),
    _req("datadir", "str", "Folder holding <dataset>/split, labels_refined.txt and word_vectors."),
    _req("save_path", "str", "Output root: checkpoints, logs and the config copy go to <save_path>/<dataset>/"
         "<experimentid>/."),
    _req("dataset", "str", "Dataset name (voc12, context, cocostuff): sub-folder of datadir and save_path."),
    _req("num_unseen", "int", "Number of unseen classes U (must match split/novel_cls.npy).", minimum=1),
    _req("embedding", "choice", "Class word embedding: word2vec (300-d), fasttext (300-d) or fastnvec (fastText then "
         "word2vec, 600-d).", choices=tuple(EMBEDDING_DIMS)),
    _req("emb_without_normal", "bool", "True: skip the L2 normalisation of each class embedding."),
    _req("display_interval", "int", "Print the running losses every this many iterations.", minimum=1),
    _req("log_interval", "int", "Append the running losses to the log file every this many iterations.", minimum=1),
    _req("snapshot", "int", "Save a checkpoint and evaluate on the test set every this many iterations.", minimum=1),
    _sched("ITER_MAX", "int", "Iterations of --schedule step1.", minimum=1),
    _sched("ITER_MAX_TRANSFER", "int", "Iterations of --schedule mixed (finetuning).", minimum=1),
    _sched("ITER_MAX_ST", "int", "Iterations of --schedule st (self-training).", minimum=1),
    _sched("ITER_MAX_ST_TRANSFER", "int", "Iterations of --schedule st_mixed.", minimum=1),
    *_optimizer_keys("dis", "classifier (discriminator)", (
        _req("dis_opt.weight_decay", "float", "L2 weight decay of the classifier optimizer.", minimum=0.0),)),
    *_optimizer_keys("back", "backbone (groups 1x/5x/10x/20x of the base rate)", (
        _req("back_opt.WEIGHT_DECAY", "float", "L2 weight decay of the backbone's conv weights (ASPP biases: 0).",
             minimum=0.0),
        _req("back_opt.MOMENTUM", "float", "SGD momentum of the backbone optimizer.", minimum=0.0),
        _new("back_opt.lr_multipliers", "float_list", (1.0, 5.0, 10.0, 20.0), "Learning-rate multipliers of the "
             "backbone groups ResNet convs / contextual convs / ASPP weights / ASPP biases.", length=4,
             minimum=0.0))),
    *_optimizer_keys("gen", "generator", (
        _req("gen_opt.weight_decay", "float", "L2 weight decay of the generator optimizer.", minimum=0.0),)),
    *_scheduler_keys("dis", "classifier"),
    *_scheduler_keys("back", "backbone"),
    _dead("back_scheduler.lr_st", "a misspelling of init_lr_st in configs_st_voc12.yaml."),
    *[_dead(f"back_scheduler.init_lr{s}", "the active schedule's back_opt rate is used instead.")
      for s in SCHEDULE_SUFFIX.values()],
    *[_dead(f"back_scheduler.max_iter{s}", "the active schedule's ITER_MAX* is used instead.")
      for s in SCHEDULE_SUFFIX.values()],
    *_scheduler_keys("gen", "generator"),
    _req("criticUpdates", "int", "Classifier updates per iteration; extra ones back-propagate only the GAN loss.",
         minimum=1),
    _req("update_back", "flag", "Train the backbone (`t`) or freeze it (`f`); booleans accepted, read as a bool."),
    _req("gen_unseen_rate", "float", "Step 2 samples unseen classes with prior 1 + this (seen classes: 1).",
         minimum=0.0),
    _req("interval_step1", "int", "Mixed schedules: step-1 iterations per cycle.", minimum=0),
    _req("interval_step2", "int", "Mixed schedules: step-2 iterations per cycle.", minimum=0),
    _req("first", "choice", "Which step a mixed cycle starts with (step2 first cannot run: no batch loaded yet).",
         choices=("step1", "step2")),
    _req("top_p", "int", "Self-training: a void pixel gets the best unseen class among its top_p predictions.",
         minimum=1),
    _req("init", "choice", "Weight initialisation of every conv/linear layer before init_model is loaded.",
         choices=("kaiming", "gaussian", "xavier", "orthogonal", "default")),
    Key("init_model", "str", "Checkpoint loaded at the start of a fresh run (`none`: nothing); --init_model "
        "overrides it; the self-training configs have none, so --init_model is needed there."),
    _dead("init_back", "backbone checkpoint path of the self-training configs."),
    _dead("init_dis", "classifier checkpoint path of the self-training configs."),
    _dead("init_gen", "generator checkpoint path of the self-training configs."),
    _req("gen.in_dim_mlp", "int", "Generator input channels = embedding dim + back.n_classes.", minimum=1),
    _new("gen.hidden_dims_mlp", "int_list", (1024, 960, 864, 784, 720), "Generator hidden layer widths "
         "(1x1 convs, LeakyReLU 0.2).", minimum=1),
    _new("gen.dropout_mlp", "float_list", (0.1, 0.1, 0.3, 0.5, 0.5), "Dropout after each generator hidden layer "
         "(one per hidden width).", minimum=0.0, maximum=1.0),
    _req("gen.out_dim_mlp", "int", "Generator output channels (= feature dim back.n_classes).", minimum=1),
    _req("dis.in_dim_fc", "int", "Classifier input channels (= feature dim back.n_classes).", minimum=1),
    _req("dis.out_dim_fc", "int", "Classifier hidden (fc) width.", minimum=1),
    _req("dis.norm_fc", "choice", "Normalisation in the classifier trunk (only none is implemented).",
         choices=("none",)),
    _req("dis.activ_fc", "choice", "Activation in the classifier trunk (only relu is implemented).",
         choices=("relu",)),
    _req("dis.drop_fc", "float", "Dropout after the classifier trunk.", minimum=0.0, maximum=1.0),
    _req("dis.out_dim_cls", "int", "Classifier outputs C = seen + unseen + 1 (the last channel is never a target).",
         minimum=3),
    _req("back.n_classes", "int", "Feature dim F: ASPP output channels = latent-code dim.", minimum=1),
    _dead("back.contextual", "the contextual module is always on."),
    _new("back.n_blocks", "int_list", (3, 4, 23, 3), "Bottleneck blocks per ResNet stage ((3, 4, 23, 3) = "
         "ResNet-101).", length=4, minimum=1),
    _new("back.base_width", "int", 64, "Stem width; stage widths are base_width x 1/2/4/8 (mid) and x4 that "
         "(out).", minimum=1),
    _new("back.aspp_rates", "int_list", (6, 12, 18, 24), "Dilation (= padding) of each summed ASPP branch.",
         minimum=1),
    _new("back.context_width", "int", 256, "Channels of the contextual module's dilated convs.", minimum=1),
    _new("back.bn_calibration_batches", "int", 0, "For a from-scratch backbone: estimate the frozen BatchNorm "
         "statistics from this many training batches before training (0: keep the loaded statistics).", minimum=0),
    _dead("gen_version", "generator variant selector of an older code version."),
    _dead("dis_version", "classifier variant selector of an older code version."),
    _dead("back_version", "backbone variant selector of an older code version."),
    _dead("noSBD_ZS3", "dataset variant switch of an older code version."),
    _dead("load_to", "checkpoint-loading switch of an older code version."),
    _req("ignore_index", "int", "Label value ignored by every loss and metric.", minimum=0),
    _req("loss_count", "int", "Number of logged loss slots (must be 8).", choices=(8,)),
    *[_req(name, "float", doc, minimum=0.0) for name, doc in _LAMBDAS],
    _req("content_loss", "choice", "Generator content loss (the paper uses MMDLoss).",
         choices=("MMDLoss", "ContentLoss", "ContentLossMSE")),
    _req("gan_type", "choice", "GAN loss (lsgan is the original's L1 on sigmoid scores).",
         choices=("lsgan", "gan", "wgan", "wgan-gp")),
    _new("seed", "int", 0, "Seed of python, numpy and torch RNGs (a --seed flag, if given, takes precedence).",
         minimum=0),
])

_KEYS = {key.path: key for key in SCHEMA}
_SECTIONS = {path.rsplit(".", i)[0] for path in _KEYS for i in range(1, path.count(".") + 1)}


# ---------------------------------------------------------------------------------------------------------------
# Read-only config

def _freeze(value, source, prefix):
    if isinstance(value, Mapping):
        return Config(value, source, prefix)
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v, source, prefix) for v in value)
    return value


def _thaw(value):
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


class Config(Mapping):
    """Validated, read-only config: `cfg['dis_opt']['lr']`, `cfg.get('init_model')`, `cfg.value('dis_opt.lr')`.

    Sections are `Config` objects too; lists are tuples. Assignment raises TypeError (design rule 4: derived
    values are computed where they are used, never written back). `source` is the file it came from.
    """

    __slots__ = ("_data", "_source", "_prefix")

    def __init__(self, data: Mapping, source: str | None = None, _prefix: str = ""):
        frozen = {str(k): _freeze(v, source, f"{_prefix}{k}.") for k, v in data.items()}
        object.__setattr__(self, "_data", frozen)
        object.__setattr__(self, "_source", source)
        object.__setattr__(self, "_prefix", _prefix)

    @property
    def source(self) -> str | None:
        """Path of the YAML file this config was loaded from (None when built from a dict)."""
        return self._source

    def __getitem__(self, key):
        try:
            return self._data[key]
        except KeyError:
            raise KeyError(f"{self._prefix}{key}") from None

    def __iter__(self):
        return iter(self._data)

    def __len__(self):
        return len(self._data)

    def __repr__(self):
        return f"Config({self.to_dict()!r}, source={self._source!r})"

    def _read_only(self, *_args):
        raise TypeError(f"Config is read-only ({self._source or 'in-memory config'}); compute derived values "
                        "where they are used or build a new config with Config.updated()")

    __setitem__ = __delitem__ = __setattr__ = __delattr__ = _read_only

    def __reduce__(self):
        return (_rebuild_config, (self.to_dict(), self._source, self._prefix))

    def value(self, key: str, default: Any = None) -> Any:
        """Dotted access relative to this mapping, e.g. `cfg.value('back_scheduler.lr_decay_iter')`.

        Returns `default` when a schema key is absent (optional without default, or a dead key). A dotted key that
        the schema does not know and the config does not hold raises KeyError (catches typos).
        """
        node: Any = self
        for part in key.split("."):
            if not isinstance(node, Config) or part not in node._data:
                full = f"{self._prefix}{key}"
                if full in _KEYS or full in _SECTIONS:
                    return default
                raise KeyError(f"{full!r} is not a config key ({_describe(self._source)})")
            node = node._data[part]
        return node

    def to_dict(self) -> dict:
        """Plain nested dict (lists, not tuples) in key order, e.g. for saving or for a checkpoint."""
        return _thaw(self)

    def updated(self, changes: Mapping[str, Any]) -> "Config":
        """A new validated config with dotted keys replaced, e.g. `cfg.updated({'back.n_blocks': [1, 1, 1, 1]})`."""
        if self._prefix:
            raise TypeError("Config.updated() works on the top-level config only")
        data = self.to_dict()
        for dotted, new_value in changes.items():
            node = data
            parts = dotted.split(".")
            for part in parts[:-1]:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    raise ConfigError(f"{_describe(self._source)}: cannot set {dotted!r}: {part!r} is not a section")
            node[parts[-1]] = new_value
        return validate_config(data, self._source)


def _rebuild_config(data, source, prefix):
    return Config(data, source, prefix)


# ---------------------------------------------------------------------------------------------------------------
# Validation

def _describe(source):
    return source if source else "<in-memory config>"


def _where(source, lines, path):
    line = lines.get(path)
    return f"{_describe(source)}, line {line}" if line else _describe(source)


def _expected(key: Key) -> str:
    if key.kind == "choice" or key.choices:
        return "one of " + ", ".join(repr(c) for c in key.choices)
    text = {
        "int": "an integer", "float": "a number", "str": "a non-empty string", "bool": "true or false",
        "flag": "'t' or 'f' (or true/false)", "int_list": "a list of integers", "float_list": "a list of numbers",
        "any": "any value",
    }[key.kind]
    if key.length is not None:
        text += f" of length {key.length}"
    each = "each " if key.kind.endswith("list") else ""
    if key.minimum is not None and key.maximum is not None:
        text += f", {each}in [{key.minimum:g}, {key.maximum:g}]"
    elif key.minimum is not None:
        text += f", {each}>= {key.minimum:g}"
    if key.kind in ("float", "float_list"):
        text += " (numeric strings such as '5e-05' are accepted)"
    return text


def _to_number(value, want_int):
    """Coerce a YAML scalar to int/float; None when it is not numeric (bools are not numbers here)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip()) if not want_int else _str_to_int(value.strip())
        except ValueError:
            return None
    if isinstance(value, int):
        return value if want_int else float(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        if want_int:
            return int(value) if value.is_integer() else None
        return value
    return None


def _str_to_int(text):
    try:
        return int(text)
    except ValueError:
        number = float(text)
        if math.isfinite(number) and number.is_integer():
            return int(number)
        raise


def _in_range(key: Key, number) -> bool:
    if key.minimum is not None and number < key.minimum:
        return False
    return key.maximum is None or number <= key.maximum


def _coerce(key: Key, value, where):
    """Check one value against its schema row; return the normalised value or raise ConfigError."""
    def fail():
        raise ConfigError(f"{where}: key {key.path!r} has value {value!r}; expected {_expected(key)}")

    kind = key.kind
    if kind == "any":
        return value
    if kind in ("int", "float"):
        number = _to_number(value, kind == "int")
        if number is None or not _in_range(key, number) or (key.choices and number not in key.choices):
            fail()
        return number
    if kind in ("int_list", "float_list"):
        if not isinstance(value, (list, tuple)) or not value or (key.length and len(value) != key.length):
            fail()
        items = [_to_number(v, kind == "int_list") for v in value]
        if any(v is None or not _in_range(key, v) for v in items):
            fail()
        return items
    if kind == "bool":
        if not isinstance(value, bool):
            fail()
        return value
    if kind == "flag":
        if isinstance(value, bool):
            return value
        if value in ("t", "f"):
            return value == "t"
        fail()
    if kind in ("str", "choice"):
        if not isinstance(value, str) or not value or (key.choices and value not in key.choices):
            fail()
        return value
    raise AssertionError(f"schema kind {kind!r} of {key.path!r} is not handled")


def _suggest(path: str) -> str:
    candidates = sorted(set(_KEYS) | _SECTIONS)
    lowered = {c.lower(): c for c in candidates}
    if path.lower() in lowered:
        return f"; did you mean {lowered[path.lower()]!r}?"
    close = difflib.get_close_matches(path, candidates, n=1, cutoff=0.6)
    if not close:
        close = difflib.get_close_matches(path.lower(), list(lowered), n=1, cutoff=0.6)
        close = [lowered[c] for c in close]
    return f"; did you mean {close[0]!r}?" if close else ""


def _walk(raw: Mapping, prefix: str, source, lines, out: dict):
    for raw_key, value in raw.items():
        name = str(raw_key)
        path = f"{prefix}{name}"
        where = _where(source, lines, path)
        if path in _KEYS:
            out[name] = _coerce(_KEYS[path], value, where)
        elif path in _SECTIONS:
            if not isinstance(value, Mapping):
                raise ConfigError(f"{where}: key {path!r} has value {value!r}; expected a section (a mapping of "
                                  "keys)")
            out[name] = {}
            _walk(value, f"{path}.", source, lines, out[name])
        else:
            raise ConfigError(f"{where}: unknown key {path!r} (value {value!r}){_suggest(path)}")


def _lookup(data: dict, path: str, default=None):
    node: Any = data
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def _insert(data: dict, path: str, value):
    parts = path.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def _cross_checks(data: dict, source):
    name = _describe(source)

    def fail(message):
        raise ConfigError(f"{name}: {message}")

    for net in NETS:
        policy = _lookup(data, f"{net}_scheduler.lr_policy")
        needed = [k.path for k in SCHEMA if k.path.startswith(f"{net}_scheduler.") and policy in k.policies]
        missing = [p for p in needed if _lookup(data, p) is None]
        if missing:
            fail(f"{net}_scheduler.lr_policy is {policy!r}, which needs {', '.join(repr(m) for m in missing)}; "
                 "add them to the file")

    emb = EMBEDDING_DIMS[data["embedding"]]
    feat = data["back"]["n_classes"]
    if data["gen"]["in_dim_mlp"] != emb + feat:
        fail(f"gen.in_dim_mlp is {data['gen']['in_dim_mlp']}; expected embedding dim + back.n_classes = "
             f"{emb} ({data['embedding']}) + {feat} = {emb + feat}")
    for path in ("gen.out_dim_mlp", "dis.in_dim_fc"):
        if _lookup(data, path) != feat:
            fail(f"{path} is {_lookup(data, path)}; expected back.n_classes = {feat} (the feature dim)")
    hidden, dropout = data["gen"]["hidden_dims_mlp"], data["gen"]["dropout_mlp"]
    if len(hidden) != len(dropout):
        fail(f"gen.dropout_mlp has {len(dropout)} values {dropout} but gen.hidden_dims_mlp has {len(hidden)} "
             f"layers {hidden}; expected one dropout rate per hidden layer")
    if data["num_unseen"] > data["dis"]["out_dim_cls"] - 2:
        fail(f"num_unseen is {data['num_unseen']}; expected at most dis.out_dim_cls - 2 = "
             f"{data['dis']['out_dim_cls'] - 2} (C = seen + unseen + 1, at least one seen class)")
    if data["interval_step1"] + data["interval_step2"] < 1:
        fail("interval_step1 and interval_step2 are both 0; expected a cycle of at least one iteration")
    low, high = data["SCALE_RANGE"]
    if not 0 < low <= high:
        fail(f"SCALE_RANGE is {[low, high]}; expected [low, high] with 0 < low <= high")


def validate_config(data: Mapping, source: str | None = None, _lines: Mapping | None = None) -> Config:
    """Validate a parsed config (nested mapping) against SCHEMA; fill defaults; return a read-only Config.

    `source` names the file in error messages. Raises ConfigError (a ValueError).
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{_describe(source)}: the config must be a mapping of keys, got {type(data).__name__} "
                          f"{data!r}")
    lines = _lines or {}
    out: dict = {}
    _walk(data, "", source, lines, out)
    missing = [k for k in SCHEMA if k.required and _lookup(out, k.path) is None]
    if missing:
        described = "; ".join(f"{k.path!r} ({_expected(k)}: {k.doc})" for k in missing)
        raise ConfigError(f"{_describe(source)}: missing required key{'s' if len(missing) > 1 else ''} {described}")
    for key in SCHEMA:
        if key.has_default and _lookup(out, key.path) is None:
            _insert(out, key.path, list(key.default) if isinstance(key.default, tuple) else key.default)
    _cross_checks(out, source)
    return Config(out, source)


def _key_lines(text: str) -> dict:
    """Dotted key -> 1-based line number of the key in the YAML text (best effort)."""
    lines: dict = {}

    def walk(node, prefix):
        if not isinstance(node, yaml.MappingNode):
            return
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                path = f"{prefix}{key_node.value}"
                lines[path] = key_node.start_mark.line + 1
                walk(value_node, f"{path}.")

    try:
        walk(yaml.compose(text, Loader=yaml.SafeLoader), "")
    except yaml.YAMLError:
        pass
    return lines


def load_config(path: str | os.PathLike) -> Config:
    """Parse and validate a YAML config file. Raises ConfigError (ValueError) naming the file, key and value.

    A missing file raises ConfigFileNotFoundError (both ValueError and FileNotFoundError).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConfigFileNotFoundError(f"config file {path!r} does not exist (or is not a file); expected a YAML "
                                      "file such as configs/voc12.yaml")
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark else path
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"{where}: YAML syntax error: {problem}; expected valid YAML") from None
    if data is None:
        raise ConfigError(f"{path}: the file is empty; expected a YAML mapping of config keys")
    return validate_config(data, path, _key_lines(text))


# ---------------------------------------------------------------------------------------------------------------
# Schedule-dependent keys

def _suffix(schedule: str) -> str:
    if schedule not in SCHEDULE_SUFFIX:
        raise ValueError(f"--schedule {schedule!r} is unknown; expected one of {', '.join(SCHEDULES)}")
    return SCHEDULE_SUFFIX[schedule]


def _schedule_key_paths(schedule: str) -> list:
    suffix = _suffix(schedule)
    return [f"ITER_MAX{suffix.upper()}"] + [f"{net}_opt.lr{suffix}" for net in NETS]


def _schedule_error(cfg: Config, schedule: str, missing: list) -> ConfigError:
    source = cfg.source
    supported = [s for s in SCHEDULES if all(cfg.value(p) is not None for p in _schedule_key_paths(s))]
    text = f"{_describe(source)} has no {', '.join(missing)}, needed by --schedule {schedule}"
    if supported:
        text += f" (this file supports --schedule {', '.join(supported)})"
    dataset = cfg.get("dataset")
    if dataset in _SHIPPED_DATASETS:
        suggestion = _SCHEDULE_CONFIG[schedule].format(ds=dataset, st=_ST_CONFIG_NAME[dataset])
        nearby = os.path.join(os.path.dirname(source), suggestion) if source else ""
        suggestion = nearby if nearby and os.path.isfile(nearby) else f"configs/{suggestion}"
        if not source or os.path.basename(source) != os.path.basename(suggestion):
            text += f"; use {suggestion}"
    return ConfigError(text)


def check_schedule_keys(cfg: Config, schedule: str) -> None:
    """Raise ConfigError when the keys that `--schedule schedule` reads (ITER_MAX*, <net>_opt.lr*) are missing."""
    missing = [p for p in _schedule_key_paths(schedule) if cfg.value(p) is None]
    if missing:
        raise _schedule_error(cfg, schedule, missing)


def iter_max(cfg: Config, schedule: str) -> int:
    """Iteration budget of the schedule: ITER_MAX, ITER_MAX_TRANSFER, ITER_MAX_ST or ITER_MAX_ST_TRANSFER."""
    path = f"ITER_MAX{_suffix(schedule).upper()}"
    value = cfg.value(path)
    if value is None:
        raise _schedule_error(cfg, schedule, [path])
    return value


def learning_rate(cfg: Config, net: str, schedule: str) -> float:
    """Base learning rate of `net` ('dis', 'gen' or 'back') for the schedule: <net>_opt.lr{,_transfer,_st,...}."""
    if net not in NETS:
        raise ValueError(f"learning_rate: net {net!r} is unknown; expected one of {', '.join(NETS)}")
    path = f"{net}_opt.lr{_suffix(schedule)}"
    value = cfg.value(path)
    if value is None:
        raise _schedule_error(cfg, schedule, [path])
    return value


# ---------------------------------------------------------------------------------------------------------------
# Saving

class _Dumper(yaml.SafeDumper):
    """Block style for sections, flow style ([3, 4, 23, 3]) for lists."""


_Dumper.add_representer(list, lambda dumper, data: dumper.represent_sequence(
    "tag:yaml.org,2002:seq", data, flow_style=True))


def save_config(cfg: Mapping, path: str | os.PathLike) -> None:
    """Write the config as YAML atomically (temp file + os.replace), keeping key order; flags are written t/f."""
    path = os.fspath(path)
    data = _thaw(cfg)
    for key in SCHEMA:
        if key.kind == "flag" and isinstance(_lookup(data, key.path), bool):
            _insert(data, key.path, "t" if _lookup(data, key.path) else "f")
    text = yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True)
    atomic_write(str(path), lambda out: out.write(text), binary=False)


# ---------------------------------------------------------------------------------------------------------------
# Reference documentation

def _format_default(value) -> str:
    if isinstance(value, tuple):
        return "`[" + ", ".join(str(v) for v in value) + "]`"
    return f"`{value}`"


def _format_type(key: Key) -> str:
    if key.kind == "any":
        return "any"
    if len(key.choices) == 1:
        return f"`{key.choices[0]}` (only value)"
    if key.choices:
        return "one of " + ", ".join(f"`{c}`" for c in key.choices)
    text = {"int": "int", "float": "float", "str": "str", "bool": "bool", "flag": "`t`/`f` or bool → bool",
            "int_list": "list of int", "float_list": "list of float"}[key.kind]
    if key.length is not None:
        text = text.replace("list of", f"list of {key.length}")
    if key.minimum is not None and key.maximum is not None:
        text += f" in [{key.minimum:g}, {key.maximum:g}]"
    elif key.minimum is not None:
        text += f" ≥ {key.minimum:g}"
    return text


def _format_requirement(key: Key) -> str:
    if key.required:
        return "required"
    if key.status == "schedule":
        schedule = {v: k for k, v in SCHEDULE_SUFFIX.items()}
        suffix = next(s for s in sorted(SCHEDULE_SUFFIX.values(), key=len, reverse=True)
                      if key.path.lower().endswith(s.lower()))
        return f"required by `--schedule {schedule[suffix]}`"
    if key.status == "policy":
        return "required if `lr_policy` is " + " or ".join(f"`{p}`" for p in key.policies)
    if key.has_default:
        return _format_default(key.default)
    return "optional"


_REFERENCE_INTRO = """\
# Config reference

Generated by `libs.config.config_reference_markdown()` from the schema in `libs/config.py`; regenerate with
`python -m libs.config write-reference docs/config_reference.md` (a test checks this file is up to date).

The configs use the original CaGNet key names and nesting, so a config written for the original release loads
unchanged. `load_config` rejects unknown keys (suggesting the closest known key), missing required keys and
values of the wrong type, naming the file, the line, the key and the value.

* **Schedule keys.** `ITER_MAX*` and `<net>_opt.lr*` are read for the active `--schedule` only
  (`step1`: no suffix, `mixed`: `_transfer`, `st`: `_st`, `st_mixed`: `_st_transfer`); `check_schedule_keys`
  reports the ones the chosen schedule lacks and names the config meant for it.
* **Scheduler keys** are needed according to the section's `lr_policy`.
* **Numbers.** PyYAML reads `5e-05` (no dot) as a string; float keys accept numeric strings, int keys accept
  integral values such as `4e4`. The shipped configs write `5.0e-05`.
* **`update_back`** is `t`/`f` in the original files; `true`/`false` are accepted too, and the loaded value is a
  bool. Saved copies write `t`/`f`.
* **Dead keys** (any value, no effect) are accepted so original configs load unchanged.
* **New keys** (marked *new*) are optional; their defaults are the paper's values.
"""


def config_reference_markdown() -> str:
    """Markdown reference of every config key (key, type, default / requirement, meaning)."""
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key in SCHEMA:
        meaning = key.doc
        if key.status == "new":
            meaning = f"*new* — {meaning}"
        elif key.status == "dead":
            meaning = f"*dead* — {meaning}"
        cells = [f"`{key.path}`", _format_type(key), _format_requirement(key), meaning]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return _REFERENCE_INTRO + "\n" + "\n".join(rows) + "\n"


def write_config_reference(path: str | os.PathLike) -> None:
    """Write `config_reference_markdown()` to `path` (docs/config_reference.md)."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as out:
        out.write(config_reference_markdown())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m libs.config", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    ref = commands.add_parser("write-reference", help="write the markdown key reference")
    ref.add_argument("path", nargs="?", default="docs/config_reference.md")
    check = commands.add_parser("check", help="validate config files (optionally for a --schedule)")
    check.add_argument("configs", nargs="+")
    check.add_argument("--schedule", choices=SCHEDULES)
    args = parser.parse_args(argv)
    if args.command == "write-reference":
        write_config_reference(args.path)
        return 0
    status = 0
    for path in args.configs:
        try:
            cfg = load_config(path)
            if args.schedule:
                check_schedule_keys(cfg, args.schedule)
        except ValueError as err:
            print(f"FAIL {err}", file=sys.stderr)
            status = 1
        else:
            print(f"ok   {path}")
    return status


if __name__ == "__main__":
    sys.exit(main())
