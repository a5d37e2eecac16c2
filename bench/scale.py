#!/usr/bin/env python3
"""`make bench PROFILE=scale`: the storage service with a million watermarks, against itself empty, same run.

    bench/scale.py BIN_DIR [--sources 1000000] [--history 10000000] [--duration 5s]

Seeds a database with `storage-service seed` (timed; database size per million watermarks), starts the service
on it and on a database of 1,000 watermarks, and measures on both: time from start to a healthy /health,
GET of existing watermarks, PUT to many sources, /health, /status and /metrics at 64 connections, a page of
the `status` and `stale_after_seconds` list filters, and peak RSS. Every figure of the large database is
also given as a ratio to the small one. Prints a table and writes bench/results/<UTC date>-scale.json.
It reports; it never asserts.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from run import free_port, parse_wrk, peak_rss_kib, write_report  # noqa: E402

LUA_GET = """
math.randomseed(42)
request = function()
  return wrk.format("GET", "/api/v1/watermarks/seed-" .. math.random(0, %d))
end
"""
LUA_PUT = """
counter = 0
base = os.date("!%%Y-%%m-%%dT%%H:%%M:%%S", os.time() + 60)
request = function()
  counter = counter + 1
  local body = '{"timestamp":"' .. base .. '.' .. string.format("%%09d", counter) .. 'Z","status":"success","records_collected":1}'
  return wrk.format("PUT", "/api/v1/watermarks/seed-" .. (counter %% %d), {["Content-Type"] = "application/json"}, body)
end
"""


def seed(binary, path, sources, history):
    start = time.perf_counter()
    subprocess.run([binary, "seed", "--database-path", path, "--sources", str(sources), "--history", str(history)],
                   check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def start_service(binary, path, work):
    port = free_port()
    env = dict(os.environ, HOST="127.0.0.1", LOG_LEVEL="warning", PORT=str(port), DATABASE_PATH=path)
    log = open(os.path.join(work, f"storage-{port}.log"), "w")
    started = time.perf_counter()
    proc = subprocess.Popen([binary], env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = started + 60
    while time.perf_counter() < deadline:
        if proc.poll() is not None:
            sys.exit(f"bench: storage-service exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as answer:
                if answer.status == 200:
                    return proc, port, time.perf_counter() - started
        except OSError:
            time.sleep(0.01)
    sys.exit("bench: storage-service did not become healthy")


def timed_get(port, path, count=20):
    """Median milliseconds of `count` sequential GETs of `path`."""
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}") as answer:
            answer.read()
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    return round(samples[len(samples) // 2], 3)


def measure(binary, path, sources, work, duration):
    proc, port, healthy = start_service(binary, path, work)
    figures = {"healthy_after_s": round(healthy, 3)}
    try:
        for name, lua, url in [
            ("GET existing", LUA_GET % (sources - 1), "/"), ("PUT many sources", LUA_PUT % sources, "/"),
            ("GET /health", None, "/health"), ("GET /status", None, "/status"), ("GET /metrics", None, "/metrics"),
        ]:
            command = ["wrk", "-t1", "-c64", f"-d{duration}", "--latency"]
            if lua:
                script = os.path.join(work, "scenario.lua")
                with open(script, "w") as out:
                    out.write(lua)
                command += ["-s", script]
            output = subprocess.run(command + [f"http://127.0.0.1:{port}{url}"], capture_output=True, text=True,
                                    check=True).stdout
            figures[name] = parse_wrk(output)
        figures["list status=failed (ms)"] = timed_get(port, "/api/v1/watermarks?status=failed&limit=100")
        figures["list stale_after_seconds=7200 (ms)"] = timed_get(
            port, "/api/v1/watermarks?stale_after_seconds=7200&limit=100")
        figures["peak_rss_mib"] = round(peak_rss_kib(proc.pid) / 1024, 1)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return figures


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("bin")
    parser.add_argument("--sources", type=int, default=int(os.environ.get("BENCH_SOURCES", "1000000")))
    parser.add_argument("--history", type=int, default=int(os.environ.get("BENCH_HISTORY", "10000000")))
    parser.add_argument("--duration", default=os.environ.get("BENCH_DURATION", "5s"))
    args = parser.parse_args()
    binary = os.path.join(args.bin, "storage-service")
    work = tempfile.mkdtemp(prefix="bench-scale-")
    try:
        small_path, large_path = os.path.join(work, "small.db"), os.path.join(work, "large.db")
        seed(binary, small_path, 1000, 10000)
        seconds = seed(binary, large_path, args.sources, args.history)
        size = sum(os.path.getsize(large_path + s) for s in ("", "-wal") if os.path.exists(large_path + s))
        print(f"bench: seeded {args.sources} watermarks and {args.history} history rows in {seconds:.0f} s, "
              f"{size / 2**20:.0f} MiB ({size / 2**20 / (args.sources / 1e6):.0f} MiB per million watermarks)")
        small = measure(binary, small_path, 1000, work, args.duration)
        large = measure(binary, large_path, args.sources, work, args.duration)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    header = f"{'figure':36} {'1,000 sources':>14} {f'{args.sources:,} sources':>18} {'ratio':>7}"
    print()
    print(header)
    print("-" * len(header))
    rows = []
    for key in small:
        if isinstance(small[key], dict):
            for sub, unit in (("rps", "req/s"), ("p99_ms", "p99 ms")):
                rows.append((f"{key} {unit}", small[key][sub], large[key][sub]))
        else:
            rows.append((key, small[key], large[key]))
    for name, a, b in rows:
        print(f"{name:36} {a:>14} {b:>18} {b / a if a else 0:>7.2f}")
    path = write_report("-scale", {
        "sources": args.sources, "history": args.history, "seed_seconds": round(seconds, 1),
        "database_mib": round(size / 2**20, 1), "mib_per_million_watermarks": round(size / 2**20 / (args.sources / 1e6), 1),
        "wrk": f"-t1 -c64 -d{args.duration}", "small": small, "large": large})
    print(f"\n(wrk -t1 -c64 -d{args.duration}) written to {path}")

if __name__ == "__main__":
    main()
