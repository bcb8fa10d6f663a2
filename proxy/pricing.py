"""Prices and cost arithmetic (SPEC §10): the dated table in ``prices.toml``, config overrides,
and the USD cost of one call from the upstream's ``usage``.

Units: prices are USD per million tokens; costs are ``Decimal`` USD quantized to
``COST_QUANTUM`` (1e-10 USD). That is fine enough for a single token of the cheapest model
(0.02 USD/M = 2e-8 USD) with two digits to spare, and being fixed-point it makes sums exact:
10,000 costs of x add up to exactly 10,000 * x, with no float drift. No float is ever used
in the arithmetic; config values (parsed as floats) enter through their shortest ``repr``,
so ``0.10`` in TOML becomes ``Decimal("0.1")``.

Unknown price → ``cost()`` returns None, and the caller records the call as unpriced, never
as free. The usage conventions understood are documented on ``proxy.token_counts.read_usage``.
"""

from __future__ import annotations

import functools
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import date as Date
from decimal import ROUND_CEILING, ROUND_HALF_EVEN, Decimal, localcontext
from importlib import resources
from typing import Any

from proxy.config_schema import Price as ConfigPrice
from proxy.token_counts import read_usage

__all__ = [
    "COST_QUANTUM",
    "Price",
    "PriceTable",
    "cost",
    "format_usd",
    "worst_case_cost",
]

COST_QUANTUM = Decimal("1e-10")
"""Costs are rounded (half to even) to this many USD; worst-case reservations round up."""

_MILLION = Decimal(1_000_000)
# Anthropic prices prompt-cache writes as multiples of the base input price, the same for
# every model: 1.25x for the default 5-minute entries, 2x for 1-hour entries.
_CACHE_WRITE_5M = Decimal("1.25")
_CACHE_WRITE_1H = Decimal(2)
_DATA_FILE = "prices.toml"
_ROW_KEYS = frozenset({"input", "output", "cached_input", "reasoning", "date", "source"})
_RATES = ("input", "output", "cached_input", "reasoning")


@dataclass(frozen=True, slots=True)
class Price:
    """One model's prices in USD per million tokens, with where and when they were taken.

    ``cached_input`` None: cached prompt tokens are charged at ``input``. ``reasoning`` None:
    reasoning tokens are charged at ``output`` (how every catalog provider bills them).
    ``date`` is None for a row that came from the config, which gives no date.
    """

    input: Decimal
    output: Decimal
    cached_input: Decimal | None = None
    reasoning: Decimal | None = None
    date: str | None = None  # "YYYY-MM-DD"
    source: str = ""  # the provider's pricing page, or "config ..."


class PriceTable(Mapping[str, Price]):
    """Prices keyed ``"provider/model"``: a read-only mapping, so one table serves every request.

    ``unpriced`` names the catalog models the data file leaves out on purpose.
    """

    __slots__ = ("_rows", "unpriced")

    def __init__(self, rows: Mapping[str, Price], unpriced: frozenset[str] = frozenset()) -> None:
        self._rows = dict(rows)
        self.unpriced = unpriced

    @classmethod
    def builtin(cls) -> PriceTable:
        """The table in ``proxy/prices.toml``, read once per process."""
        return _builtin()

    @classmethod
    def from_toml(cls, text: str, origin: str = _DATA_FILE) -> PriceTable:
        """Parse a price file; ValueError naming the row and field when it is malformed.

        Numbers are parsed straight into Decimal (``parse_float``), so the file's digits are
        kept exactly.
        """
        data = tomllib.loads(text, parse_float=Decimal)
        unpriced = data.pop("unpriced", [])
        if not isinstance(unpriced, list) or not all(isinstance(k, str) and "/" in k for k in unpriced):
            raise ValueError(f'{origin}: unpriced: must be an array of "provider/model" strings')
        rows = {key: _row(origin, key, value) for key, value in data.items()}
        both = set(rows) & set(unpriced)
        if both:
            raise ValueError(f"{origin}: {sorted(both)[0]} is both priced and listed as unpriced")
        return cls(rows, frozenset(unpriced))

    def lookup(self, provider: str, model: str) -> Price | None:
        """The price of ``provider/model`` (the provider's own model id), or None if unknown."""
        return self._rows.get(f"{provider}/{model}")

    def with_overrides(self, overrides: Mapping[str, ConfigPrice], source: str = "config") -> PriceTable:
        """A new table where each config ``[prices."provider/model"]`` row replaces the fields it sets.

        Fields the override leaves out come from the built-in row. A row for a model this
        table lacks (a custom provider, say) must set input and output, else ValueError;
        ``proxy.config`` checks that at load time with a key-path message.
        """
        rows = dict(self._rows)
        for key, override in overrides.items():
            rows[key] = _merge(key, rows.get(key), override, source)
        return PriceTable(rows, self.unpriced - set(overrides))

    def __iter__(self) -> Iterator[str]:
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, key: str) -> Price:
        return self._rows[key]


@functools.cache
def _builtin() -> PriceTable:
    # importlib.resources, not a path from __file__: it also works from a zip or wheel install.
    text = resources.files("proxy").joinpath(_DATA_FILE).read_text(encoding="utf-8")
    return PriceTable.from_toml(text)


def _row(origin: str, key: str, value: object) -> Price:
    where = f'{origin}: "{key}"'
    if not isinstance(value, dict) or "/" not in key:
        raise ValueError(f'{where}: expected a table keyed "provider/model"')
    unknown = set(value) - _ROW_KEYS
    if unknown:
        raise ValueError(f"{where}.{sorted(unknown)[0]}: unknown key")
    rates: dict[str, Decimal | None] = {}
    for name in _RATES:
        rate = value.get(name)
        if isinstance(rate, int) and not isinstance(rate, bool):
            rate = Decimal(rate)
        if not (rate is None or (isinstance(rate, Decimal) and rate.is_finite() and rate >= 0)):
            raise ValueError(f"{where}.{name}: must be a number >= 0")
        rates[name] = rate
    day, source = value.get("date"), value.get("source")
    try:
        Date.fromisoformat(day if isinstance(day, str) and len(day) == 10 else "")
    except ValueError:
        raise ValueError(f'{where}.date: must be a "YYYY-MM-DD" string') from None
    if not (isinstance(source, str) and source.startswith("https://")):
        raise ValueError(f"{where}.source: must be the https:// URL of the pricing page")
    input_, output = rates.pop("input"), rates.pop("output")
    if input_ is None or output is None:
        raise ValueError(f"{where}: needs input and output")
    return Price(input_, output, rates["cached_input"], rates["reasoning"], day, source)


def _merge(key: str, base: Price | None, override: ConfigPrice, source: str) -> Price:
    given = {name: _decimal(getattr(override, name)) for name in _RATES}
    if base is not None:  # the built-in row fills in what the override leaves out
        changes = {name: value for name, value in given.items() if value is not None}
        # date None: the row now mixes the config's values with the file's; no single date fits.
        return replace(base, **changes, date=None, source=f"{source} over {base.source} ({base.date})")
    input_, output = given["input"], given["output"]
    if input_ is None or output is None:
        raise ValueError(f"{key}: not in the built-in price table, so input and output are required")
    return Price(input_, output, given["cached_input"], given["reasoning"], None, source)


def _decimal(value: float | None) -> Decimal | None:
    # repr is the shortest string that round-trips the float: 0.1 -> "0.1", never 0.1000000000000000055.
    return None if value is None else Decimal(repr(value))


def cost(price: Price | None, usage: Mapping[str, Any] | None) -> Decimal | None:
    """The USD cost of one call, or None when it cannot be priced (unknown price, no usage).

    ``usage`` is the upstream's usage object in any convention ``read_usage`` accepts.
    Prompt tokens are charged at ``input``, except cached reads at ``cached_input`` (or
    ``input`` when the row has none) and Anthropic cache writes at 1.25x / 2x ``input``.
    Completion tokens are charged at ``output``, except reasoning tokens at ``reasoning``
    when the row prices them separately. Rounded half-even to ``COST_QUANTUM``.
    """
    tokens = read_usage(usage) if price is not None and usage is not None else None
    if price is None or tokens is None:
        return None
    cached_rate = price.input if price.cached_input is None else price.cached_input
    uncached = tokens.prompt - tokens.cached - tokens.cache_write - tokens.cache_write_1h
    reasoning = tokens.reasoning if price.reasoning is not None else 0
    with localcontext() as ctx:
        ctx.prec = 60  # exact: these are integers times short decimals, far below 60 digits
        total = (
            uncached * price.input
            + tokens.cached * cached_rate
            + tokens.cache_write * price.input * _CACHE_WRITE_5M
            + tokens.cache_write_1h * price.input * _CACHE_WRITE_1H
            + (tokens.completion - reasoning) * price.output
            + reasoning * (price.reasoning or 0)
        )
        return (total / _MILLION).quantize(COST_QUANTUM, rounding=ROUND_HALF_EVEN)


def worst_case_cost(price: Price, prompt_tokens_estimate: int, max_tokens: int) -> Decimal:
    """The most a call can cost: every prompt token uncached at ``input``, and all
    ``max_tokens`` generated at the dearer of ``output`` and ``reasoning``.

    For budget reservations (SPEC §10), so it rounds UP to ``COST_QUANTUM``: a reservation
    is never below the call's real cost. (Cache writes, 1.25x input, are not assumed: a
    call's cache use is not known before it is sent.)
    """
    if prompt_tokens_estimate < 0 or max_tokens < 0:
        raise ValueError("token counts must be >= 0")
    out_rate = max(price.output, price.reasoning or price.output)
    with localcontext() as ctx:
        ctx.prec = 60
        total = prompt_tokens_estimate * price.input + max_tokens * out_rate
        return (total / _MILLION).quantize(COST_QUANTUM, rounding=ROUND_CEILING)


def format_usd(amount: Decimal) -> str:
    """A cost as the ``X-Sluice-Cost-USD`` header spells it: plain decimal notation, no
    exponent, trailing zeros trimmed, ``"0"`` for zero (``Decimal("1.50000")`` → ``"1.5"``)."""
    if not amount.is_finite():
        raise ValueError(f"not a finite amount: {amount}")
    text = format(amount, "f")  # "f" never uses an exponent, whatever the Decimal's exponent
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text
