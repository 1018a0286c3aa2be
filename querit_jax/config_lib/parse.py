"""The one ConfigDict -> frozen dataclass builder every config section goes through.

A section is a frozen dataclass with a default for every field and a `validate()` method that raises
`ConfigError` naming the field (`data.batch_size: must be >= 1.`). `build` fills it from the plain
dict of a config file: unknown keys are refused naming the section, nested sections are built the
same way, comma lists become tuples, mappings of overrides become sorted tuples of pairs, and a
field may name its own converter (`field(metadata={"parse": fn})`, e.g. the merge's t specs). Each
section is validated as soon as it is built, nested sections first, so the outermost `validate()`
(the experiment's cross-section rules) sees sections that are already valid.
"""

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any

import ml_collections

from querit_jax.errors import ConfigError


def require(cond: bool, field: str, message: str) -> None:
    """Raises `ConfigError("<field>: <message>")` unless `cond`."""
    if not cond:
        raise ConfigError(f"{field}: {message}")


def plain(value: Any) -> Any:
    """ConfigDicts (also inside lists) -> dicts, recursively; everything else as it is."""
    if isinstance(value, ml_collections.ConfigDict):
        value = value.to_dict()
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v) for v in value)
    return value


def split_list(value) -> tuple[str, ...]:
    """'a, b,' or ['a', 'b'] -> ('a', 'b'): entries stripped, empty ones dropped."""
    items = value.split(",") if isinstance(value, str) else value
    return tuple(s for s in (str(v).strip() for v in items) if s)


def parsed_field(parse, **field_args) -> dataclasses.Field:
    """A dataclass field that `build` reads with `parse(value, where)` instead of by its type."""
    return dataclasses.field(metadata={"parse": parse}, **field_args)


def build(cls, values: Mapping, path: str = "", **fixed):
    """A validated `cls` from the plain dict of its section.

    Args:
      cls: a frozen config dataclass whose fields all have defaults. values: the section as given;
      fields it leaves out keep their defaults. path: the section's dotted name in messages ("" for
      a whole config, "merge", "merge.sharding"). **fixed: fields the caller sets and the config may
      not (e.g. the merge's `raw`).
    Returns:
      The instance, checked by its own `validate()` and its nested sections'.
    Raises:
      ConfigError: naming the section for unknown keys and the field for invalid values.
    """
    return _build(cls(**fixed), values, path, frozenset(fixed))


def _build(default, values: Mapping, path: str, fixed: frozenset = frozenset()):
    """`default` with the fields of `values` replaced (nested sections start from default's own)."""
    cls = type(default)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init and f.name not in fixed}
    unknown = set(values) - set(fields)
    if unknown:
        where = f"config.{path}" if path else "config"
        raise ConfigError(f"{where}: unknown field(s) {sorted(unknown)}; known: {sorted(fields)}.")
    changes = {}
    for name, value in values.items():
        where = f"{path}.{name}" if path else name
        changes[name] = _convert(fields[name], hints[name], getattr(default, name), value, where)
    built = dataclasses.replace(default, **changes)
    _validate(built, path)
    return built


def _convert(field: dataclasses.Field, hint, default, value, where: str):
    """One field's value from the config, by the field's own parser or its type."""
    if "parse" in field.metadata:
        return field.metadata["parse"](value, where)
    section = _section_class(hint)
    if section is not None:
        base = default if isinstance(default, section) else section()
        return _build(base, dict(value), where)
    if hint == tuple[str, ...]:
        return split_list(value)
    if hint == tuple[tuple[str, Any], ...]:  # model.overrides, sharding.rule_overrides
        return tuple(sorted(dict(value).items()))
    return value


def _section_class(hint):
    """The dataclass a field holds (`X` or `X | None`), or None for a plain value."""
    if dataclasses.is_dataclass(hint):
        return hint
    options = [a for a in typing.get_args(hint) if dataclasses.is_dataclass(a)]
    return options[0] if options and type(None) in typing.get_args(hint) else None


def _validate(section, path: str) -> None:
    """Runs `section.validate()`; a section nested deeper than usual gets the outer path in front.

    Sections name their fields from their usual place (`sharding.mesh.data`); the merge's sharding
    section sits at `merge.sharding`, so its messages read `merge.sharding.mesh.data`.
    """
    if not hasattr(section, "validate"):
        return
    try:
        section.validate()
    except ConfigError as err:
        outer, _, name = path.rpartition(".")
        message = str(err)
        if outer and message.startswith(name) and not message.startswith(path):
            raise ConfigError(f"{outer}.{message}") from None
        raise
