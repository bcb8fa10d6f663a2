-- wrk script for the Sluice benchmark: POST a small chat completion, then print the figures as one JSON line.
--
--   wrk -t1 -c32 -d10s --latency -s bench/post.lua http://127.0.0.1:PORT/v1/chat/completions
--
-- BENCH_BODY in the environment replaces the body (bench/run.py passes the one its own client sends);
-- otherwise BENCH_STREAM=1 asks for `"stream": true` (a 50-chunk SSE answer from bench/fake_upstream.py).
-- bench/run.py reads the line starting with "BENCH_JSON " that done() prints.

local stream = os.getenv("BENCH_STREAM") == "1"

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-client-bench"
wrk.body = os.getenv("BENCH_BODY") or '{"model": "bench/m", "messages": [{"role": "system", "content": "You are terse."}, '
  .. '{"role": "user", "content": "Hello, how are you today?"}]'
  .. (stream and ', "stream": true}' or '}')

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "bytes": %d, '
      .. '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, '
      .. '"latency_us": {"mean": %.1f, "max": %d, "p50": %d, "p90": %d, "p99": %d, "p999": %d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.max, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9)))
end
