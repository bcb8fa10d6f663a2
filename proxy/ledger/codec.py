"""A `CallRecord` as one compact JSON object (the Redis ledger's stream entries and its spool).

Money is written as a string ("0.000123"), never as a JSON number, so no
reader turns it into a float. Field names are the dataclass's own; a record
written by an older version decodes with the fields it lacks at their
defaults, and unknown fields are ignored.
"""

from __future__ import annotations

import json
import logging
from dataclasses import fields
from decimal import Decimal
from typing import Any

from proxy.ledger.record import AttemptRow, CallRecord

_CALL_FIELDS = tuple(f.name for f in fields(CallRecord) if f.name != "tries")
_TRY_FIELDS = tuple(f.name for f in fields(AttemptRow))
_MONEY = ("cost_usd", "saved_usd")
_TEXT = ("prompt_text", "answer_text")

logger = logging.getLogger("sluice.ledger")


def record_to_dict(rec: CallRecord, *, store_text: bool) -> dict[str, Any]:
    """`rec` as JSON-ready data; without `store_text`, the prompt and answer are left out."""
    data = {name: getattr(rec, name) for name in _CALL_FIELDS}
    for name in _MONEY:
        if data[name] is not None:
            data[name] = str(data[name])
    if not store_text:
        for name in _TEXT:
            data[name] = None
    data["tries"] = [{name: getattr(row, name) for name in _TRY_FIELDS} for row in rec.tries]
    return data


def record_from_dict(data: dict[str, Any]) -> CallRecord:
    """The record `record_to_dict` made (KeyError / TypeError / ValueError when it is not one)."""
    values = {name: data[name] for name in _CALL_FIELDS if name in data}
    for name in _MONEY:
        if values.get(name) is not None:
            values[name] = Decimal(values[name])
    tries = [AttemptRow(**{name: row[name] for name in _TRY_FIELDS}) for row in data.get("tries") or ()]
    return CallRecord(**values, tries=tries)


def encode(rec: CallRecord, *, store_text: bool) -> bytes:
    """`rec` as compact UTF-8 JSON (one line: JSON escapes every newline inside strings)."""
    return json.dumps(record_to_dict(rec, store_text=store_text), separators=(",", ":")).encode()


def decode(raw: bytes | str) -> CallRecord:
    """The record in `raw` (ValueError or a KeyError/TypeError when it is not one)."""
    return record_from_dict(json.loads(raw))


def encode_all(records: list[CallRecord], store_text: bool) -> list[bytes]:
    """`encode` each record; one that JSON cannot hold is logged by request id and left out, alone."""
    payloads = []
    for rec in records:
        try:
            payloads.append(encode(rec, store_text=store_text))
        except (TypeError, ValueError) as exc:
            logger.error("ledger: record of request %s not stored: %s", rec.request_id, exc)
    return payloads
