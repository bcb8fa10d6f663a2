"""Make docs/dashboard.png: the dashboard at laptop width (1280 px) over a day of synthetic traffic.

Run from the repository root (needs the dev extra and Debian's chromium at /usr/bin/chromium):

    .venv/bin/python -m docs.make_screenshot

It writes a day of made-up calls (a fixed random seed, so the picture only changes when the
page does) into a throwaway SQLite ledger, serves the gateway on it with [auth] on, logs in
through the form like a person would, and saves a full-page screenshot.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import random
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

from proxy.app import build_app
from proxy.config import load_config
from proxy.ledger import AttemptRow, CallRecord, SqliteLedger
from tests.servers import serve

OUT = Path(__file__).with_name("dashboard.png")
ADMIN_KEY = "gk-screenshot-admin"
CALLS = 1600
# USD per million tokens, input and output.
PRICES = {
    ("cerebras", "llama3.1-8b"): (Decimal("0.10"), Decimal("0.10")),
    ("groq", "llama-3.1-8b-instant"): (Decimal("0.05"), Decimal("0.08")),
    ("openai", "gpt-4o-mini"): (Decimal("0.15"), Decimal("0.60")),
    ("anthropic", "claude-3-5-haiku-latest"): (Decimal("0.80"), Decimal("4.00")),
}
LATENCY_MS = {"cerebras": 260, "groq": 320, "openai": 900, "anthropic": 1300}
ROUTES = [  # (route the client asked for, its targets in order, share of traffic)
    ("fast", [("cerebras", "llama3.1-8b"), ("groq", "llama-3.1-8b-instant")], 0.45),
    ("openai/gpt-4o-mini", [("openai", "gpt-4o-mini")], 0.22),
    ("anthropic/claude-3-5-haiku-latest", [("anthropic", "claude-3-5-haiku-latest")], 0.08),
    ("trial", [], 0.25),  # A/B: one of the two variants below
]
VARIANTS = [("cerebras", "llama3.1-8b"), ("openai", "gpt-4o-mini")]
KEYS = [("team-search", 0.5), ("team-support", 0.3), ("nightly-batch", 0.2)]
HAS_VERDICTS = "verdict" in {f.name for f in dataclasses.fields(CallRecord)}


def pick(rng: random.Random, weighted: list[tuple[str, float]]) -> str:
    return rng.choices([name for name, _ in weighted], [w for _, w in weighted])[0]


def cost(target: tuple[str, str], tokens_in: int, tokens_out: int) -> Decimal:
    price_in, price_out = PRICES[target]
    return (price_in * tokens_in + price_out * tokens_out) / 1_000_000


def make_call(rng: random.Random, i: int, ts: float) -> list[CallRecord]:
    """One client call (and, for some A/B calls, the judge's call after it)."""
    route, targets, _ = rng.choices(ROUTES, [share for *_, share in ROUTES])[0]
    variant = None
    if route == "trial":
        target = rng.choice(VARIANTS)
        targets, variant = [target], f"{target[0]}/{target[1]}"
    tokens_in, tokens_out = rng.randint(200, 3000), rng.randint(40, 700)
    stream = rng.random() < 0.6
    base = {"ts": ts, "request_id": f"req-{i:05d}", "key_id": pick(rng, KEYS), "route": route, "stream": stream}
    if rng.random() < 0.12:  # a cache hit: no provider time, what it saved
        served = targets[0]
        saved = cost(served, tokens_in, tokens_out)
        latency = rng.uniform(1, 4)
        hit = CallRecord(
            **base,
            provider=served[0],
            model=served[1],
            status=200,
            cache_status="HIT",
            attempts=0,
            latency_ms=latency,
            ttft_ms=latency,
            cost_usd=Decimal(0),
            saved_usd=saved,
            variant=variant,
        )
        return [hit]
    tries, at = [], 0
    if len(targets) > 1 and rng.random() < 0.12:  # the first target rate-limited or down: fall back
        status = rng.choice([429, 429, 503, None])  # None: no first byte in time, so it may have been billed
        error = "first byte timeout" if status is None else f"upstream answered {status}"
        tries.append(AttemptRow(1, *targets[0], status, "failed", error, None, 45.0, status is None))
        at = 1
    provider, model = targets[at]
    latency = rng.lognormvariate(math.log(LATENCY_MS[provider]), 0.35) + 45 * at
    failed = rng.random() < 0.025
    status = rng.choice([500, 502, 400]) if failed else 200
    ttft = latency * rng.uniform(0.15, 0.3) if stream else latency
    tries.append(
        AttemptRow(
            at + 1,
            provider,
            model,
            status,
            "failed" if failed else "ok",
            f"upstream answered {status}" if failed else None,
            ttft,
            latency,
            False,
        )
    )
    rec = CallRecord(
        **base,
        provider=provider,
        model=model,
        status=status,
        cache_status="MISS",
        attempts=len(tries),
        latency_ms=latency,
        ttft_ms=None if failed else ttft,
        input_tokens=tokens_in,
        output_tokens=None if failed else tokens_out,
        cost_usd=None if failed else cost((provider, model), tokens_in, tokens_out),
        variant=variant,
        error=f"upstream answered {status}" if failed else None,
        possibly_billed=any(t.possibly_billed for t in tries),
        tries=tries,
    )
    records = [rec]
    if variant is not None and not failed and HAS_VERDICTS and rng.random() < 0.3:
        opponent = next(f"{p}/{m}" for p, m in VARIANTS if f"{p}/{m}" != variant)
        odds = 0.62 if provider == "openai" else 0.38  # the judge prefers one a little
        verdict = "win" if rng.random() < odds else rng.choice(["loss", "loss", "tie"])
        records.append(
            CallRecord(
                ts=ts + 1,
                request_id=f"judge-{i:05d}",
                key_id="judge:trial",  # as proxy.experiments.judge records it
                route="trial",
                provider="openai",
                model="gpt-4o-mini",
                status=200,
                cache_status="MISS",
                attempts=1,
                latency_ms=700.0,
                ttft_ms=700.0,
                input_tokens=900,
                output_tokens=5,
                cost_usd=cost(("openai", "gpt-4o-mini"), 900, 5),
                variant=variant,
                judge=True,
                **{"verdict": verdict, "opponent": opponent},
            )
        )
    return records


def synthetic_day(now: float) -> list[CallRecord]:
    """A day of traffic, busier in the (UTC) afternoon."""
    rng = random.Random(7)
    records = []
    for i in range(CALLS):
        while True:  # rejection sampling of a daily curve
            ago = rng.uniform(0, 86_400)
            hour = time.gmtime(now - ago).tm_hour
            if rng.random() < 0.35 + 0.65 * math.sin(math.pi * ((hour - 6) % 24) / 24) ** 2:
                break
        records.extend(make_call(rng, i, now - ago))
    return sorted(records, key=lambda r: r.ts)


async def write_ledger(path: str, records: list[CallRecord]) -> None:
    ledger = SqliteLedger(path)
    await ledger.start()
    for rec in records:
        ledger.record(rec)
    await ledger.aclose()


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        db = f"{tmp}/sluice.db"
        asyncio.run(write_ledger(db, synthetic_day(time.time())))
        config = Path(tmp) / "sluice.toml"
        config.write_text(f'[auth]\nadmin_key = "{ADMIN_KEY}"\n[ledger]\npath = "{db}"\n')
        with serve(build_app(load_config(config, env={}))) as url, sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url + "/dashboard/login")
            page.fill("#key", ADMIN_KEY)
            page.click("button[type=submit]")
            page.wait_for_url(url + "/dashboard")
            expect(page.get_by_test_id("status")).to_contain_text("updated")
            page.screenshot(path=str(OUT), full_page=True)
            browser.close()
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
