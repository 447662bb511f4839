"""What every configuration of halp-trt shares: validation once, in ``__post_init__``,
errors that name the field, and a JSON round trip.

A config is a dataclass deriving :class:`ConfigBase`. Its ``__post_init__`` checks every
field with :meth:`ConfigBase._require` (or the ``_int`` / ``_choice`` shorthands); a
bad value raises :class:`ConfigError`, one line naming the field, the values it
allows and the value given. The command-line tools print the same error with the
field's flag (``--batch-size`` for ``batch_size``) and exit with code 2.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from ..errors import UserError

C = TypeVar("C", bound="ConfigBase")


class ConfigError(UserError):
    """A configuration value outside what its field allows.

    Attributes:
        owner: the config class (``"PruneConfig"``).
        field: the field's name (``"steps"``).
        requirement: what the field allows, in words (``"must be an integer >= 1"``).
        value: the value given.
    """

    def __init__(self, owner: str, field: str, requirement: str, value: Any) -> None:
        self.owner, self.field, self.requirement, self.value = owner, field, requirement, value
        super().__init__(f"{owner}.{field} {requirement}, not {value!r}")

    def cli_message(self) -> str:
        """The same error as a command line names it: ``--steps must be ..., not 0``."""
        return f"--{self.field.replace('_', '-')} {self.requirement}, not {self.value!r}"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


class ConfigBase:
    """Validation helpers and the JSON round trip for the dataclass configs.

    Subclasses name their nested configs in ``_nested`` (field name to class) so
    :meth:`from_dict` rebuilds them from plain dicts.
    """

    _nested: ClassVar[Mapping[str, type[ConfigBase]]] = {}

    # -- validation -----------------------------------------------------------------

    def _fail(self, field: str, requirement: str) -> None:
        raise ConfigError(type(self).__name__, field, requirement, getattr(self, field))

    def _require(self, field: str, ok: bool, requirement: str) -> None:
        """Raise :class:`ConfigError` for ``field`` unless ``ok``."""
        if not ok:
            self._fail(field, requirement)

    def _int(
        self, field: str, least: int, *, optional: bool = False, most: int | None = None
    ) -> None:
        """``field`` is an integer >= ``least`` (and <= ``most``; or None when
        ``optional``)."""
        value = getattr(self, field)
        if optional and value is None:
            return
        ok = _is_int(value) and value >= least and (most is None or value <= most)
        self._require(
            field,
            ok,
            f"must be an integer >= {least}"
            if most is None
            else f"must be an integer from {least} to {most}",
        )

    def _number(
        self, field: str, *, low: float, high: float = math.inf, open_low: bool = False
    ) -> None:
        """``field`` is a finite number in ``[low, high)`` (``(low, high)`` if open_low)."""
        value = getattr(self, field)
        ok = _is_number(value) and (value > low if open_low else value >= low) and value < high
        bounds = f"> {low}" if open_low else f">= {low}"
        if high != math.inf:
            bounds += f" and < {high}"
        self._require(field, ok, f"must be a number {bounds}")

    def _choice(self, field: str, allowed: Iterable[Any]) -> None:
        """``field`` is one of ``allowed``."""
        allowed = tuple(allowed)
        shown = ", ".join("None" if a is None else str(a) for a in allowed)
        self._require(field, getattr(self, field) in allowed, f"must be one of {shown}")

    # -- JSON round trip ------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The config as plain JSON types (nested configs as dicts, tuples as lists)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, ConfigBase):
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
        """Build (and so validate) a config from :meth:`to_dict`'s output.

        Raises:
            ConfigError: an unknown field, or a value its field does not allow.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(cls.__name__, "(all)", "must be a JSON object", data)
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        for key in data:
            if key not in names:
                raise ConfigError(
                    cls.__name__, str(key), f"is not a field (fields: {', '.join(sorted(names))})",
                    data[key],
                )  # fmt: skip
        kwargs = dict(data)
        for key, sub in cls._nested.items():
            if isinstance(kwargs.get(key), Mapping):
                kwargs[key] = sub.from_dict(kwargs[key])
        return cls(**kwargs)

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        """The config as JSON text; also written to ``path`` (atomically) when given."""
        text = json.dumps(self.to_dict(), indent=1) + "\n"
        if path is not None:
            from lut_builder.fileio import atomic_write

            atomic_write(path, text)
        return text

    @classmethod
    def from_json(cls: type[C], source: str | os.PathLike) -> C:
        """A config from JSON text or from the path of a JSON file.

        Raises:
            UserError: unreadable or malformed JSON.
            ConfigError: a field it does not allow.
        """
        text = str(source)
        if isinstance(source, os.PathLike) or not text.lstrip().startswith("{"):
            try:
                text = Path(source).read_text()
            except OSError as exc:
                raise UserError(f"cannot read the config {source}: {exc.strerror}") from None
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise UserError(f"{cls.__name__} JSON is malformed: {exc}") from None
        return cls.from_dict(data)

    def replace(self: C, **changes: Any) -> C:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]
