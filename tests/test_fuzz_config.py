"""Property-based fuzzing of the config loader and of command-line overrides (issue 7).

See tests/test_fuzz.py for the profiles and what every target must satisfy: a loaded
config, or a ConfigError with a one-line message; a loaded config survives a save/load
round trip.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import typing
from pathlib import Path

import yaml
from hypothesis import given
from hypothesis import strategies as st

from fuzzing import ANY_TEXT, JSON_VALUES, RUNS, TEXTS, TINY_YAML, ended, scratch
from stages.config import ConfigError, PipelineConfig, load_config, save_config, to_dict

def _schema(cls: type, prefix: str = "") -> dict[str, object]:
    """Every dotted key of the config and its type."""
    keys = {}
    for name, tp in typing.get_type_hints(cls).items():
        keys.update(_schema(tp, f"{prefix}{name}.") if dataclasses.is_dataclass(tp) else {prefix + name: tp})
    return keys


SCHEMA = _schema(PipelineConfig)
SCHEMA_KEYS = sorted(SCHEMA)
TYPED = {int: st.integers(-2, 300) | st.integers(), float: st.floats(-0.5, 1.5) | st.floats(), bool: st.booleans(),
         str: TEXTS, list[str]: st.lists(TEXTS, max_size=3), dict[str, str]: st.dictionaries(TEXTS, TEXTS, max_size=2)}


def _typed_value(key: str) -> st.SearchStrategy:
    """A value of the key's type (often breaking a cross-field rule), or of any type."""
    tp = SCHEMA[key]
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        typed = st.sampled_from([m.value for m in tp])
    else:  # lists of sections (evals.gates) get JSON values of any shape
        typed = TYPED.get(tp, JSON_VALUES)
    return typed | JSON_VALUES if typed is not TEXTS else typed


SETTINGS = st.sampled_from(SCHEMA_KEYS).flatmap(lambda key: st.tuples(st.just(key), _typed_value(key)))
BILLION_LAUGHS = "[&l0 [x,x,x,x,x,x,x,x,x,x], " + ", ".join(
    f"&l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 9)) + "]"
HOSTILE_VALUES = ["[1,", "{", "]", "&a [*a]", "*undefined", "!!python/object/apply:os.system [echo]", "!!binary zz",
                  "!!set {a, b}", "2001-12-14", "0x" + "f" * 4000, "9" * 5000, "-1", "0", ".nan", "-.inf", "1e999",
                  "'", '"\\', "- a\n- b", "a: b: c", "? [a]\n: b", "\t", "\x00", BILLION_LAUGHS, "[" * 3000,
                  "{a: 1, a: 2}", "!custom x", "<<: *a", "---\na: 1\n---\nb: 2", "%YAML 2.0\n---\n1", ""]
YAML_VALUES = st.sampled_from(HOSTILE_VALUES) | st.integers().map(str) | ANY_TEXT | st.sampled_from(
    ["documents", "padded", "stream", "wsd", "cosine", "offline", "float32", "[a.jsonl]", "{qa: b.jsonl}"])


def _mutate_yaml(text: str, how: int, at: int, extra: str) -> str:
    at = at % (len(text) + 1)
    return [text, text[:at], text[:at] + extra + text[at:], text + "\n" + extra, extra,
            text + "\n" + text.split("\n", 1)[-1]][how]  # the last: every top-level key twice


def _tree(settings: list[tuple[str, object]]) -> dict:
    """The tiny config with ``settings`` (dotted key, value) applied."""
    tree = yaml.safe_load(TINY_YAML)
    for key, value in settings:
        *parents, leaf = key.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {}) if isinstance(node.get(part, {}), dict) else {}
        node[leaf] = value
    return tree


CONFIG_TREES = st.lists(SETTINGS | st.tuples(TEXTS, JSON_VALUES), max_size=6).map(_tree)
CONFIG_TEXTS = st.one_of(
    st.builds(_mutate_yaml, st.just(TINY_YAML) | CONFIG_TREES.map(yaml.safe_dump), st.integers(0, 5),
              st.integers(0, 5000), st.sampled_from(HOSTILE_VALUES) | YAML_VALUES),
    ANY_TEXT, st.sampled_from(HOSTILE_VALUES).map(lambda v: f"run: {{name: {v}}}\n"),
    st.sampled_from(HOSTILE_VALUES).map(lambda v: f"cpt: {v}\n"),
)


def _config_round_trip(cfg: PipelineConfig, folder: Path) -> None:
    save_config(cfg, folder / "saved.yaml")
    again = load_config(folder / "saved.yaml")
    assert _numbers_as_floats(to_dict(again)) == _numbers_as_floats(to_dict(cfg))


def _numbers_as_floats(value: object) -> object:
    """A float field's default may be an int (30, read back as 30.0); NaN equals itself here."""
    if isinstance(value, dict):
        return {k: _numbers_as_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers_as_floats(v) for v in value]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "nan" if value != value else float(value)
    return value


@given(text=CONFIG_TEXTS, raw=st.none() | st.binary(max_size=200))
def test_config_loader_returns_a_config_or_a_config_error(text, raw):
    RUNS["config"] += 1
    with scratch() as folder:
        path = folder / "c.yaml"
        path.write_bytes(raw if raw is not None else text.encode("utf-8", "surrogatepass"))
        try:
            cfg = load_config(path)
        except ConfigError as exc:
            return ended("config", exc)
        assert isinstance(cfg, PipelineConfig)
        _config_round_trip(cfg, folder)
    ended("config", "loaded")


OVERRIDE_KEYS = st.one_of(
    st.sampled_from(SCHEMA_KEYS), st.sampled_from(["", ".", "a..b", "cpt..max_steps", "cpt.", ".cpt", "évals",
                                                   "evals.general.tasks.x", "evals.general.tasks..x", "run.name.x",
                                                   "cpt.max_steps.x", "data.domain", "ünïcode.kéy", "a b"]),
    st.builds(lambda k, t: k + t, st.sampled_from(SCHEMA_KEYS), TEXTS), TEXTS)
OVERRIDES = st.one_of(
    st.builds(lambda k, sep, v: k + sep + v, OVERRIDE_KEYS, st.sampled_from(["=", "=", "", "=="]), YAML_VALUES),
    SETTINGS.map(lambda kv: f"{kv[0]}={json.dumps(kv[1])}"))  # JSON is YAML: typed values, mostly well-formed


@given(overrides=st.lists(OVERRIDES, max_size=4))
def test_overrides_return_a_config_or_a_config_error(overrides):
    RUNS["overrides"] += 1
    with scratch() as folder:
        (folder / "c.yaml").write_text(TINY_YAML)
        try:
            cfg = load_config(folder / "c.yaml", overrides)
        except ConfigError as exc:
            return ended("overrides", exc)
        _config_round_trip(cfg, folder)
    ended("overrides", "loaded")


# ---------------------------------------------------------------- tolerant corpus readers
