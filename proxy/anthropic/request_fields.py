"""Typed, strict access to the fields of an Anthropic Messages request, for `proxy.anthropic.request`.

Every read either returns a value of the expected type or raises `Untranslatable`
naming the field at fault ("messages[2].content[0].type"), so a body of the wrong
shape gets a clean 400, never a 500. A field set to null counts as absent, and
`cache_control` is ignored everywhere (why: see `proxy.anthropic.request`).
"""

from __future__ import annotations

from typing import Any, TypeVar

__all__ = ["NO_EQUIVALENT", "Fields", "Untranslatable", "block_type", "check", "number"]

T = TypeVar("T")

_IGNORED = "cache_control"
_KINDS: dict[type, str] = {str: "a string", bool: "a boolean", dict: "an object", list: "an array", int: "an integer"}

NO_EQUIVALENT = {
    "top_k": "Chat Completions has no top_k sampling parameter",
    "thinking": "extended thinking has no Chat Completions equivalent",
    "service_tier": "Anthropic's service tiers have no Chat Completions equivalent",
    "citations": "citations have no Chat Completions equivalent",
}
"""Why some well-known fields cannot be sent, so the 400 says more than "no equivalent"."""


class Untranslatable(Exception):
    """The request has no faithful Chat Completions form, or is not a valid Messages request.

    `param` is the path of the field at fault ("messages[2].content[0].type"),
    `reason` says why; `str(exc)` is "param: reason", ready for a 400 message.
    """

    def __init__(self, param: str, reason: str) -> None:
        super().__init__(f"{param}: {reason}")
        self.param = param
        self.reason = reason


class Fields:
    """An object of the request without its null and `cache_control` fields, and typed access to them.

    Every failure raises `Untranslatable` naming the field, from `path` (the object's own).
    """

    def __init__(self, value: Any, path: str, *allowed: str) -> None:
        self.path = path
        self.values = {k: v for k, v in check(value, path or "body", dict).items() if v is not None and k != _IGNORED}
        for key in self.values:
            if key not in allowed:
                raise Untranslatable(self.at(key), NO_EQUIVALENT.get(key, "has no Chat Completions equivalent"))

    def __contains__(self, key: str) -> bool:
        return key in self.values

    def at(self, key: str) -> str:
        """The path of field `key`."""
        return f"{self.path}.{key}" if self.path else key

    def get(self, key: str, kind: type[T], default: T | None = None) -> T:
        """Field `key`, which must be a `kind`; `default` when absent, which is an error without one."""
        value = self.values.get(key, default)
        if value is None:
            raise Untranslatable(self.at(key), "is required")
        return check(value, self.at(key), kind)


def block_type(block: Any, path: str) -> str:
    """The `type` of a content block, which must be an object with a string `type`."""
    return check(check(block, path, dict).get("type"), f"{path}.type", str)


def check(value: Any, path: str, kind: type[T]) -> T:
    """`value`, if it is a `kind`; else `Untranslatable` naming `path`."""
    if not isinstance(value, kind):
        raise Untranslatable(path, f"must be {_KINDS.get(kind, 'of another type')}")
    return value


def number(value: Any, path: str) -> float:
    """`value`, if it is an int or a float (not a bool); else `Untranslatable` naming `path`."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise Untranslatable(path, "must be a number")
    return value
