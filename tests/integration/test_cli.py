"""The `sluice` command as a newcomer runs it: demo, check-config, serve."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.integration.conftest import wait_until
from tests.servers import _bind

CANARY = "sk-canary-cli-9d8e7f6a5b4c"


def free_port() -> int:
    sock = _bind()
    port = sock.getsockname()[1]
    sock.close()
    return port


def sluice(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args], capture_output=True, text=True, timeout=30, env=env or os.environ.copy()
    )


@pytest.fixture
def running(tmp_path) -> Iterator:
    processes = []

    def start(*args: str, env: dict[str, str] | None = None) -> tuple[str, subprocess.Popen[str]]:
        port = free_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "proxy", *args, "--port", str(port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env or os.environ.copy(),
            cwd=tmp_path,  # its ledger, ./sluice.db, lands here
        )
        processes.append(process)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/healthz", timeout=0.5).status_code == 200:
                    return url, process
            except httpx.TransportError:
                time.sleep(0.05)
        process.kill()
        raise AssertionError(f"sluice {args} did not become healthy: {process.stdout.read() if process.stdout else ''}")

    yield start
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait(5)
        if process.stdout is not None:
            process.stdout.close()


def read_banner(process: subprocess.Popen[str]) -> list[str]:
    """The lines `sluice demo` printed, up to its openai SDK snippet's heading."""
    lines: list[str] = []
    assert process.stdout is not None
    while not lines or "openai SDK" not in lines[-1]:
        lines.append(process.stdout.readline())
    return lines


def test_demo_answers_its_own_printed_snippets(running):
    url, process = running("demo")
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    answer = client.chat.completions.create(model="demo/echo", messages=[{"role": "user", "content": "Hi"}])
    assert answer.choices[0].message.content
    stream = client.chat.completions.create(
        model="demo/echo", messages=[{"role": "user", "content": "Hi"}], stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=10)
    assert process.returncode == 0
    curls = [line.strip() for line in output.splitlines() if line.strip().startswith("curl ")]
    assert len(curls) >= 2
    assert "openai" in output
    calls = [json.loads(line) for line in output.splitlines() if line.startswith('{"ts"')]
    assert [(c["model"], c["status"]) for c in calls] == [("echo", 200), ("echo", 200)]  # one JSON line per call


def test_demo_printed_curl_works_verbatim(running):
    url, process = running("demo")
    port = url.rsplit(":", 1)[1]
    banner_lines = read_banner(process)
    curl = next(line for line in banner_lines if line.strip().startswith("curl ") and '"stream"' not in line)
    result = subprocess.run(shlex.split(curl.replace("8080", port)), capture_output=True, text=True, timeout=10)
    assert '"chat.completion"' in result.stdout
    start = next(i for i, line in enumerate(banner_lines) if "x-sluice-cache: on" in line)
    cache_snippet = (banner_lines[start] + banner_lines[start + 1]).replace("\\\n", " ").replace("8080", port)
    runs = [subprocess.run(["bash", "-c", cache_snippet], capture_output=True, text=True, timeout=10) for _ in "ab"]
    assert [r.stdout.strip().lower() for r in runs] == ["x-sluice-cache: miss", "x-sluice-cache: hit"]
    start = next(i for i, line in enumerate(banner_lines) if '"model": "fast"' in line) - 1
    fallback_snippet = (banner_lines[start] + banner_lines[start + 1]).replace("\\\n", " ").replace("8080", port)
    shown = subprocess.run(["bash", "-c", fallback_snippet], capture_output=True, text=True, timeout=10).stdout.lower()
    assert "x-sluice-model: echo" in shown
    assert "x-sluice-attempts: 2" in shown
    assert "x-sluice-cost-usd: 0.0000" in shown
    usage_curl = next(line for line in banner_lines if "/sluice/usage" in line).strip().replace("8080", port)

    def calls_recorded() -> int:  # the ledger writes in the background: a few ms behind
        out = subprocess.run(shlex.split(usage_curl), capture_output=True, text=True, timeout=10).stdout
        return int(json.loads(out)["totals"]["calls"])

    assert wait_until(lambda: calls_recorded() >= 4, timeout=3)


def test_check_config_prints_routes_with_keys_masked(tmp_path):
    config = tmp_path / "sluice.toml"
    config.write_text(
        '[providers.openai]\napi_key = "env:MY_OPENAI"\n[routes.fast]\ntargets = ["openai/gpt-4o-mini"]\n'
    )
    env = {**os.environ, "MY_OPENAI": CANARY}
    result = sluice("check-config", "--config", str(config), env=env)
    assert result.returncode == 0, result.stderr
    assert "fast" in result.stdout
    assert "openai/gpt-4o-mini" in result.stdout
    assert CANARY not in result.stdout + result.stderr


def test_check_config_rejects_an_unknown_key_with_exit_2(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text("[server]\nhots = 'x'\n")
    result = sluice("check-config", "--config", str(config))
    assert result.returncode == 2
    assert "bad.toml" in result.stderr
    assert "server.hots" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_refuses_a_bad_config_with_exit_2(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text('[routes.x]\nstrategy = "fastest-ever"\ntargets = ["openai/gpt-4o-mini"]\n')
    result = sluice("serve", "--config", str(config))
    assert result.returncode == 2
    assert "routes.x.strategy" in result.stderr


def test_serve_runs_on_embedded_defaults(running, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    url, _ = running("serve", env=env)
    assert httpx.get(url + "/readyz").json()["status"] == "ready"
    response = httpx.post(url + "/v1/chat/completions", json={"model": "auto", "messages": []})
    assert response.status_code == 404
    assert "no provider has an API key" in response.json()["error"]["message"]


def test_demo_ab_snippet_is_judged_and_the_longer_answer_wins(running):
    url, process = running("demo")
    port = url.rsplit(":", 1)[1]
    banner_lines = read_banner(process)
    start = next(i for i, line in enumerate(banner_lines) if "for u in" in line)
    snippet = (banner_lines[start] + banner_lines[start + 1]).replace("\\\n", " ").replace("8080", port)
    shown = subprocess.run(["bash", "-c", snippet], capture_output=True, text=True, timeout=20).stdout
    assert '"routes"' in json.dumps(json.loads(shown))

    def variants() -> dict[str, dict]:
        routes = httpx.get(url + "/sluice/experiments").json()["routes"]
        return {v["variant"]: v for route in routes for v in route["variants"]}

    # Four subjects, each call judged against the other variant: the toy judge prefers the longer answer.
    assert wait_until(lambda: sum(v["judged"] for v in variants().values()) == 8, timeout=15), variants()
    echo, terse = variants()["demo/echo"], variants()["demo/terse"]
    assert (echo["wins"], echo["losses"], terse["wins"], terse["losses"]) == (4, 0, 0, 4)
