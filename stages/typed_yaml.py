"""YAML into typed dataclasses, strictly: the machinery under ``stages.config``.

    cfg = build(PipelineConfig, parse_yaml(text, "demo.yaml", "fix the YAML"), origin="demo.yaml")

Every way a value can be wrong becomes one ``ConfigError`` line that names
where it is (file or override, dotted key, line and column for YAML syntax)
and what to do; an unknown key names the closest valid one. Values in
messages are shortened: YAML aliases can make one exponentially large.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import reprlib
import typing
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config problem the user must fix; the message says where and how."""


def parse_yaml(text: str, where: str, advice: str) -> Any:
    """``yaml.safe_load``; every way it fails becomes a one-line ConfigError naming ``where``."""
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        reason = " ".join(filter(None, [exc.context, exc.problem]))
    except (yaml.YAMLError, ValueError) as exc:  # ValueError: an integer of more than 4300 digits
        at, reason = "", str(exc)
    except RecursionError:
        at, reason = "", "nested too deeply"
    reason = " ".join(reason.split())[:200]  # yaml's messages span lines
    raise ConfigError(f"{where}: invalid YAML{at} ({reason}); {advice}")


def resolve_key(cls: type, parts: list[str], origin: str) -> None:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    head = parts[0]
    if head not in names:
        raise ConfigError(_unknown_key_message(head, names, origin))
    if len(parts) > 1:
        sub = hints[head]
        if dataclasses.is_dataclass(sub):
            resolve_key(sub, parts[1:], origin)
        elif typing.get_origin(sub) is not dict:
            raise ConfigError(f"{origin}: {head} is a value, not a section")


# Values in messages: YAML aliases can make one exponentially large (or recursive),
# and repr() of an integer of more than 4300 digits raises.
_SHORT = reprlib.Repr()
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlevel = 80, 80, 2


def shown(value: Any) -> str:
    try:
        return _SHORT.repr(value)
    except ValueError:
        return f"a {value.bit_length()}-bit integer" if isinstance(value, int) else type(value).__name__


def _name(key: Any) -> str:
    """A mapping key as messages show it: a printable string as it is, anything else as a short repr."""
    return key if isinstance(key, str) and key.isprintable() else shown(key)


def _unknown_key_message(key: str, valid: list[str], where: str) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(valid)}"
    return f"{where}: unknown key {key!r}{hint}"


def build(cls: type, data: Any, origin: str, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys."""
    where = f"{origin}: {prefix.rstrip('.') or 'top level'}"
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise ConfigError(_unknown_key_message(f"{prefix}{_name(key)}", [f"{prefix}{n}" for n in names], origin))
        kwargs[key] = _coerce(hints[key], value, origin, f"{prefix}{key}")
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _coerce(tp: Any, value: Any, origin: str, key: str) -> Any:
    bad = ConfigError(f"{origin}: {key}: expected {getattr(tp, '__name__', tp)}, got {shown(value)}")
    if dataclasses.is_dataclass(tp):
        return build(tp, value, origin, prefix=f"{key}.")
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        choices = [m.value for m in tp]
        if value not in choices:  # not tp(value): its own error holds repr(value), unbounded for YAML aliases
            raise ConfigError(f"{origin}: {key}: {shown(value)} is not one of {choices}")
        return tp(value)
    container = typing.get_origin(tp)
    if container is list:
        if not isinstance(value, list):
            raise bad
        return [_coerce(typing.get_args(tp)[0], v, origin, f"{key}[{i}]") for i, v in enumerate(value)]
    if container is dict:
        if not isinstance(value, dict):
            raise bad
        if odd := [k for k in value if not isinstance(k, str)]:  # YAML 1.1 reads `yes:` as True, `1:` as 1
            raise ConfigError(f"{origin}: {key}: keys must be strings, got {shown(odd[0])}; quote it")
        return {k: _coerce(typing.get_args(tp)[1], v, origin, f"{key}.{_name(k)}") for k, v in value.items()}
    if tp is float and isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            return float(value)  # YAML 1.1 reads "3e-4" (no dot) as a string
        except (ValueError, OverflowError):  # OverflowError: an integer beyond any float
            raise bad from None
    if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return str(value)
        except ValueError:  # an integer of more than 4300 digits
            raise bad from None
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise bad
    if tp is int and not -2**63 <= value < 2**63:  # steps, sizes and seeds end up in int64 tensors and numpy
        raise ConfigError(f"{origin}: {key}: {shown(value)} does not fit in 64 bits")
    return value


def to_dict(cfg: Any) -> dict:
    """Plain-YAML form of a config (enums become strings)."""
    return _plain(dataclasses.asdict(cfg))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.value
    return value
