"""Load, validate and save YAML configs (original CaGNet key names and nesting, docs/config_reference.md).

`load_config` parses a file, rejects unknown keys (suggesting the closest known one), missing required keys and
wrongly typed values, fills the defaults of the new optional keys and returns a read-only `Config`.

Normalisations (the validated value differs from the file's spelling):
* float keys accept numeric strings, because PyYAML (YAML 1.1) reads `5e-05` (no dot) as a string;
* int keys accept integral floats and numeric strings (`4e4` -> 40000);
* `update_back` is `t`/`f` in the original files; booleans are accepted too and the value becomes a Python bool
  (a bare string `'f'` would be truthy, a trap the normalisation removes); `save_config` writes `t`/`f` back;
* lists become tuples and sections become read-only `Config` mappings.
"""
from __future__ import annotations

import difflib
import math
import os
from collections.abc import Mapping
from typing import Any

import yaml

from libs.config.schema import _KEYS, _SECTIONS, NETS, SCHEMA, Key
from libs.datasets.embeddings import EMBEDDING_DIMS
from libs.engine.methods import DEFAULT_METHOD
from libs.io import atomic_write


class ConfigError(ValueError):
    """A config file or value is invalid; the message names the file, the key, the value and what was expected."""


class ConfigFileNotFoundError(ConfigError, FileNotFoundError):
    """The config file does not exist (both a ValueError and a FileNotFoundError)."""



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
        if not isinstance(value, str) or not value:
            fail()
        if key.choices and value not in key.choices:
            raise ConfigError(f"{where}: key {key.path!r} has value {value!r}; expected {_expected(key)}"
                              f"{_suggest_choice(value, key.choices)}")
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


def _suggest_choice(value: str, choices) -> str:
    close = difflib.get_close_matches(value, list(choices), n=1, cutoff=0.6)
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
    method = data["method"]
    if method == "spnet" and feat != emb:
        fail(f"back.n_classes is {feat}; expected the embedding dim {emb} ({data['embedding']}): SPNet's ASPP "
             "outputs the visual embedding that is projected onto the class embeddings")
    if data.get("ITER_SIZE", 1) > 1 and method != "spnet":
        fail(f"ITER_SIZE is {data['ITER_SIZE']}; only method spnet accumulates gradients (method is {method!r})")
    if method == "cagnet":
        _cagnet_checks(data, emb, feat, fail)
    low, high = data["SCALE_RANGE"]
    if not 0 < low <= high:
        fail(f"SCALE_RANGE is {[low, high]}; expected [low, high] with 0 < low <= high")


def _cagnet_checks(data: dict, emb: int, feat: int, fail):
    """The consistency of CaGNet's generator / classifier sizes (sections other methods need not have)."""
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
    method = out.get("method", DEFAULT_METHOD)
    missing = [k for k in SCHEMA if k.required_for(method) and _lookup(out, k.path) is None]
    if missing:
        described = "; ".join(f"{k.path!r} ({_expected(k)}: {k.doc})" for k in missing)
        raise ConfigError(f"{_describe(source)}: missing required key{'s' if len(missing) > 1 else ''} {described}"
                          + ("" if method == DEFAULT_METHOD else f" (required for method {method})"))
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


