-- wrk script for the Sluice benchmark: POST a small chat completion, then print the figures as one JSON line.
--
--   wrk -t1 -c32 -d10s --latency -s bench/post.lua http://127.0.0.1:PORT/v1/chat/completions
--
-- BENCH_BODY in the environment replaces the body (bench/run.py passes the one its own client sends);
-- otherwise BENCH_STREAM=1 asks for `"stream": true` (a 50-chunk SSE answer from bench/fake_upstream.py).
-- BENCH_KEY replaces the bearer key sk-client-bench (bench/stack.py sends a gateway key).
-- BENCH_CACHE=on sends `X-Sluice-Cache: on` (the cache-hit figures, bench/cache.py).
-- BENCH_EXPECT_CACHE=HIT also checks every response's X-Sluice-Cache header and counts the others
-- ("cache_other" in the JSON line; -1 when not checked). Checking makes wrk parse every response's
-- headers into a Lua table, so bench/cache.py checks in the warm-up run only.
-- bench/run.py reads the line starting with "BENCH_JSON " that done() prints.

local stream = os.getenv("BENCH_STREAM") == "1"
local cache = os.getenv("BENCH_CACHE")
local expect = os.getenv("BENCH_EXPECT_CACHE")

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("BENCH_KEY") or "sk-client-bench")
if cache and cache ~= "" then
  wrk.headers["X-Sluice-Cache"] = cache
end
wrk.body = os.getenv("BENCH_BODY") or '{"model": "bench/m", "messages": [{"role": "system", "content": "You are terse."}, '
  .. '{"role": "user", "content": "Hello, how are you today?"}]'
  .. (stream and ', "stream": true}' or '}')

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

if expect and expect ~= "" then
  checked = 0
  other = 0
  -- Defined only when asked: wrk parses response headers only for a script that has response().
  function response(status, headers, body)
    checked = checked + 1
    local value = headers["x-sluice-cache"] or headers["X-Sluice-Cache"]
    if status ~= 200 or value ~= expect then
      other = other + 1
    end
  end
end

function done(summary, latency, requests)
  local checked_total, other_total = 0, -1
  if expect and expect ~= "" then
    other_total = 0
    for _, thread in ipairs(threads) do
      checked_total = checked_total + (thread:get("checked") or 0)
      other_total = other_total + (thread:get("other") or 0)
    end
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "bytes": %d, '
      .. '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, '
      .. '"latency_us": {"mean": %.1f, "max": %d, "p50": %d, "p90": %d, "p99": %d, "p999": %d}, '
      .. '"cache_checked": %d, "cache_other": %d}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.max, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), checked_total, other_total))
end
