"""Closed-loop load from `wrk`: clients that send their next request as soon as the last is
answered, the most a server can do.

A load generator in Python spends a third to half a millisecond of CPU on every request, on
the same two cores as the server it measures; wrk (C, epoll) spends a few microseconds, so
the figures are the server's. wrk is Debian's package `wrk`, installed here when missing.
Latency is from the request written (the connection may still wait in the server's accept
queue) to the response read.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

SCRIPT = """
local paths = %(paths)s
local headers = %(headers)s
local counter = 0
local threads = {}

function setup(thread)
  thread:set("offset", #threads * 7)
  table.insert(threads, thread)
end

function request()
  counter = counter + 1
  return wrk.format("GET", paths[((counter + offset) %% #paths) + 1], headers)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests": %%d, "seconds": %%f, "p50": %%f, "p95": %%f, "p99": %%f, ' ..
    '"max": %%f, "errors": %%d}\\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1e3,
    latency:percentile(95) / 1e3, latency:percentile(99) / 1e3, latency.max / 1e3,
    e.connect + e.read + e.write + e.status + e.timeout))
end
"""


def lua_table(items: list[str] | dict[str, str]) -> str:
    """A Lua table of ASCII strings (their JSON spelling is valid Lua)."""
    if isinstance(items, dict):
        entries = [f"[{json.dumps(k)}] = {json.dumps(v)}" for k, v in items.items()]
    else:
        entries = [json.dumps(p) for p in items]
    return "{" + ", ".join(entries) + "}"


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    print("installing Debian's wrk", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], env=env,
                      capture_output=True).returncode:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], env=env, capture_output=True,
                       check=True)
    return shutil.which("wrk") or "wrk"


def closed_loop(port: int, paths: list[str], *, clients: int, duration: float,
                headers: dict[str, str] | None = None, threads: int = 2) -> dict[str, float]:
    """`clients` connections for `duration` seconds over `paths` in turn: requests, req/s,
    p50/p95/p99/max in ms and errors (failed connections and non-2xx/3xx answers)."""
    wrk = ensure_wrk()
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(SCRIPT % {"paths": lua_table(paths), "headers": lua_table(headers or {})})
    try:
        out = subprocess.run(
            [wrk, "-t", str(min(threads, clients)), "-c", str(clients), "-d", f"{duration:g}s",
             "--timeout", "10s", "-s", fh.name, f"http://127.0.0.1:{port}"],
            capture_output=True, text=True, check=True).stdout
    finally:
        Path(fh.name).unlink()
    line = next(x for x in out.splitlines() if x.startswith("RESULT "))
    result = json.loads(line[len("RESULT "):])
    result["rps"] = result["requests"] / result["seconds"]
    return result
