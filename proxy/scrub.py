"""Remove secrets from text before it reaches a log line (SPEC §6, §11; RELIABILITY #24)."""

from __future__ import annotations

import re
from collections.abc import Iterable

REDACTED = "[redacted]"


class Scrubber:
    """Replaces every known secret in a text; compiled once from the config's secrets."""

    def __init__(self, secrets: Iterable[str]) -> None:
        # Longest first, so a secret that contains another is replaced whole.
        unique = sorted({s for s in secrets if s}, key=len, reverse=True)
        self._pattern = re.compile("|".join(re.escape(s) for s in unique)) if unique else None
        self._bytes_pattern = re.compile(b"|".join(re.escape(s.encode()) for s in unique)) if unique else None

    def __call__(self, text: str) -> str:
        """`text` with each secret replaced by [redacted]."""
        if self._pattern is None:
            return text
        return self._pattern.sub(REDACTED, text)

    def bytes(self, data: bytes) -> bytes:
        """`data` with each secret (as UTF-8) replaced by [redacted]."""
        if self._bytes_pattern is None:
            return data
        return self._bytes_pattern.sub(REDACTED.encode(), data)
