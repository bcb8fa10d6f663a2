"""Typed reads from one parsed TOML table, each naming the full key path when it fails.

Every getter checks the TOML type strictly (``true`` is not an integer, ``"8080"`` is not a
port) and, where given, a range. Messages name keys and expected types, never a value that
could be a secret.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import TypeVar

from proxy.config_schema import ConfigError

KeyPart = str | int
_T = TypeVar("_T")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_TOML_TYPES: Mapping[type, str] = {
    bool: "a boolean",
    int: "an integer",
    float: "a float",
    str: "a string",
    list: "an array",
    dict: "a table",
}
ENV_PREFIX = "env:"


def key_path(parts: Iterable[KeyPart]) -> str:
    """Spell a key path as TOML would: ``routes.fast.strategy``, ``prices."a/b".input``, ``auth.keys[1]``."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            name = part if _BARE_KEY.fullmatch(part) else '"' + part.replace("\\", "\\\\").replace('"', '\\"') + '"'
            out += f".{name}" if out else name
    return out


def type_name(value: object) -> str:
    """The TOML name of a parsed value's type, with its article."""
    return _TOML_TYPES.get(type(value), "a date/time")


def as_number(value: object) -> float | None:
    """The value as a finite float, or None; booleans are not numbers here."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # TOML integers are unbounded in tomllib; 10**400 is not a price
        return None
    return number if math.isfinite(number) else None


def range_problem(value: float, lo: float | None, lo_open: bool, hi: float | None) -> str | None:
    """Why value is out of range (below lo, or at lo when lo_open, or above hi), or None."""
    below = lo is not None and (value < lo or (lo_open and value == lo))
    if not below and (hi is None or value <= hi):
        return None
    if lo is not None and hi is not None:
        return f"must be between {lo:g} and {hi:g}" + (f", not {lo:g}" if lo_open else "")
    if lo is None:
        return f"must be <= {hi:g}"
    return f"must be > {lo:g}" if lo_open else f"must be >= {lo:g}"


def env_value(env: Mapping[str, str], name: str) -> str | None:
    """A variable's value with surrounding whitespace removed (a stray newline from a secret
    file is never part of a key); None when unset or blank."""
    return env.get(name, "").strip() or None


class Table:
    """One TOML table being read, with the path that leads to it and the file it came from."""

    __slots__ = ("data", "path", "source")

    def __init__(self, data: Mapping[str, object], path: tuple[KeyPart, ...], source: str) -> None:
        self.data = data
        self.path = path
        self.source = source

    def __contains__(self, key: str) -> bool:
        return key in self.data

    def names(self) -> list[str]:
        """The keys present, in file order."""
        return list(self.data)

    def error(self, problem: str, *keys: KeyPart) -> ConfigError:
        """A ConfigError at this table's path extended by keys."""
        return ConfigError(self.source, key_path((*self.path, *keys)), problem)

    def only(self, *allowed: str) -> None:
        """Reject the first key that is not in allowed (SPEC §2: unknown keys are errors)."""
        for key in self.data:
            if key not in allowed:
                raise self.error(f"unknown key (expected one of: {', '.join(allowed)})", key)

    def _typed(self, key: str, kind: type[_T], what: str) -> _T | None:
        """The value under key if it has type kind (bool never counts as int), None if absent."""
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.error(f"must be {what}, not {type_name(value)}", key)
        return value

    def table(self, key: str) -> Table:
        """A sub-table; an empty one when the key is absent, so dataclass defaults apply."""
        return self.opt_table(key) or Table({}, (*self.path, key), self.source)

    def opt_table(self, key: str) -> Table | None:
        """A sub-table, or None when the key is absent."""
        value = self._typed(key, dict, "a table")
        return None if value is None else Table(value, (*self.path, key), self.source)

    def tables(self, key: str) -> list[Table]:
        """An array of tables (``[[x]]`` or inline ``x = [{...}]``); empty when absent."""
        items = self._typed(key, list, "an array of tables") or []
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise self.error(f"must be a table, not {type_name(item)}", key, i)
        return [Table(item, (*self.path, key, i), self.source) for i, item in enumerate(items)]

    def opt_string(self, key: str, choices: tuple[str, ...] = ()) -> str | None:
        """A string, or None when absent; non-empty, and one of choices when they are given."""
        value = self._typed(key, str, "a string")
        if value is None:
            return None
        if choices and value not in choices:
            raise self.error(f"must be one of {', '.join(choices)}; got {value!r}", key)
        if not value:
            raise self.error("must not be empty", key)
        return value

    def string(self, key: str, default: str | None = None, choices: tuple[str, ...] = ()) -> str:
        """A string; required when default is None."""
        value = self.opt_string(key, choices)
        if value is not None:
            return value
        if default is None:
            raise self.error("is required", key)
        return default

    def strings(self, key: str) -> tuple[str, ...] | None:
        """An array of non-empty strings, or None when absent."""
        items = self._typed(key, list, "an array of strings")
        if items is None:
            return None
        for i, item in enumerate(items):
            if not isinstance(item, str) or not item:
                raise self.error(f"must be a non-empty string, not {type_name(item)}", key, i)
        return tuple(items)

    def numbers(self, key: str, *, lo: float = 0, lo_open: bool = False) -> tuple[float, ...] | None:
        """An array of finite numbers, each in range, or None when absent."""
        items = self._typed(key, list, "an array of numbers")
        if items is None:
            return None
        values = []
        for i, item in enumerate(items):
            value = as_number(item)
            if value is None:
                raise self.error(f"must be a finite number, not {type_name(item)}", key, i)
            if problem := range_problem(value, lo, lo_open, None):
                raise self.error(problem, key, i)
            values.append(value)
        return tuple(values)

    def boolean(self, key: str, default: bool) -> bool:
        """A boolean (``true``/``false``, not a string or number)."""
        value = self._typed(key, bool, "a boolean (true or false)")
        return default if value is None else bool(value)

    def integer(self, key: str, default: int, *, lo: int = 1, hi: int | None = None) -> int:
        """An integer in [lo, hi]; floats and booleans are rejected."""
        value = self._typed(key, int, "an integer")
        if value is None:
            return default
        if problem := range_problem(value, lo, False, hi):
            raise self.error(problem, key)
        return value

    def opt_number(
        self, key: str, *, lo: float | None = 0, lo_open: bool = True, hi: float | None = None
    ) -> float | None:
        """A finite number (integer or float) in range, or None when absent."""
        raw = self.data.get(key)
        if raw is None:
            return None
        value = as_number(raw)
        if value is None:
            raise self.error(f"must be a finite number, not {type_name(raw)}", key)
        if problem := range_problem(value, lo, lo_open, hi):
            raise self.error(problem, key)
        return value

    def number(
        self, key: str, default: float, *, lo: float = 0, lo_open: bool = True, hi: float | None = None
    ) -> float:
        """A finite number in range, or default when absent (lo_open: lo itself is excluded)."""
        value = self.opt_number(key, lo=lo, lo_open=lo_open, hi=hi)
        return default if value is None else value

    def secret(self, key: str, env: Mapping[str, str], *, must_resolve: bool) -> str | None:
        """A secret: a literal or ``"env:NAME"`` read from env; None when the key is absent.

        When must_resolve, an unset or empty variable is an error (a gateway key that resolves
        to nothing must never be accepted); otherwise it means "no secret".
        """
        value = self._typed(key, str, "a string")
        if value is None:
            return None
        if not value.startswith(ENV_PREFIX):
            if not value and must_resolve:
                raise self.error("must not be empty", key)
            return value or None
        name = value[len(ENV_PREFIX) :]
        if not name:
            raise self.error(f'"{ENV_PREFIX}" needs a variable name, e.g. "{ENV_PREFIX}MY_KEY"', key)
        resolved = env_value(env, name)
        if resolved is None and must_resolve:
            raise self.error(f"environment variable {name} is not set or is empty", key)
        return resolved
