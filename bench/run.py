#!/usr/bin/env python3
"""`make bench`: the storage service under wrk, every figure a ratio to a Hummingbird hello world of the same run.

    bench/run.py BIN_DIR [--duration 8s] [--connections 1,64]

Starts `bench-hello` and `storage-service` (release builds in BIN_DIR) on free ports of 127.0.0.1, probes the
fsync latency of the disk that holds the database, then runs each scenario at each connection count with
`wrk -t1` (the machine has 2 cores: one for the load, one for the server). Prints a table and writes
bench/results/<UTC date>.json. It reports; it never asserts.
"""
import argparse
import datetime
import http.client
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))

LUA_GET_EXISTING = """
math.randomseed(42)
request = function()
  return wrk.format("GET", "/api/v1/watermarks/bench-" .. math.random(0, 999))
end
"""
LUA_GET_MISSING = """
math.randomseed(43)
request = function()
  return wrk.format("GET", "/api/v1/watermarks/missing-" .. math.random(0, 999999))
end
"""
# Timestamps grow within a run (a nanosecond a request) and from one run to the next (the base is an hour
# before the start of the run), so no write is a regression; 1000 sources.
LUA_PUT_MANY = """
counter = 0
base = os.date("!%Y-%m-%dT%H:%M:%S", os.time() - 3600)
request = function()
  counter = counter + 1
  local body = '{"timestamp":"' .. base .. '.' .. string.format("%09d", counter) .. 'Z","status":"success","records_collected":1}'
  return wrk.format("PUT", "/api/v1/watermarks/bench-" .. (counter % 1000), {["Content-Type"] = "application/json"}, body)
end
"""
# One source: concurrent writes may arrive out of order, so the deliberate-backfill flag keeps them all 2xx.
LUA_PUT_HOT = """
counter = 0
request = function()
  counter = counter + 1
  local body = '{"timestamp":"2025-02-01T00:00:00.' .. string.format("%09d", counter) .. 'Z","status":"success","records_collected":1}'
  return wrk.format("PUT", "/api/v1/watermarks/bench-hot?force=true", {["Content-Type"] = "application/json"}, body)
end
"""
LUA_MIX = """
math.randomseed(44)
counter = 0
request = function()
  counter = counter + 1
  if counter % 10 == 0 then
    local body = '{"timestamp":"2025-03-01T00:00:00.' .. string.format("%09d", counter) .. 'Z","status":"success","records_collected":1}'
    return wrk.format("PUT", "/api/v1/watermarks/bench-" .. math.random(0, 999) .. "?force=true", {["Content-Type"] = "application/json"}, body)
  end
  return wrk.format("GET", "/api/v1/watermarks/bench-" .. math.random(0, 999))
end
"""

SCENARIOS = [
    # name, server, path, lua
    ("hello (baseline)", "hello", "/", None),
    ("GET /health", "storage", "/health", None),
    ("GET existing (1000 ids)", "storage", "/", LUA_GET_EXISTING),
    ("GET missing (404)", "storage", "/", LUA_GET_MISSING),
    ("PUT many sources", "storage", "/", LUA_PUT_MANY),
    ("PUT one hot source", "storage", "/", LUA_PUT_HOT),
    ("90/10 read/write", "storage", "/", LUA_MIX),
]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port, proc, what):
    deadline = time.time() + 30
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"bench: {what} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"bench: {what} did not listen on {port}")


def fsync_probe(folder, count=200):
    """Latency of a 4 KiB write + fsync on the database's disk, in ms."""
    path = os.path.join(folder, "fsync-probe")
    samples = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for _ in range(count):
            os.write(fd, b"x" * 4096)
            start = time.perf_counter()
            os.fsync(fd)
            samples.append((time.perf_counter() - start) * 1000)
    finally:
        os.close(fd)
        os.unlink(path)
    samples.sort()
    return {"p50_ms": round(samples[len(samples) // 2], 3), "p99_ms": round(samples[int(len(samples) * 0.99) - 1], 3)}


def seed(port):
    connection = http.client.HTTPConnection("127.0.0.1", port)
    for index in range(1000):
        body = json.dumps({"timestamp": "2024-01-01T00:00:00Z", "status": "success", "records_collected": 1})
        connection.request("PUT", f"/api/v1/watermarks/bench-{index}", body, {"Content-Type": "application/json"})
        answer = connection.getresponse()
        answer.read()
        if answer.status not in (200, 201):
            sys.exit(f"bench: seeding answered {answer.status}")
    connection.close()


def to_ms(text):
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1, "s": 1000, "m": 60000}[unit]


def parse_wrk(output):
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    percent = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", output, re.M))
    requests = int(re.search(r"(\d+) requests in", output).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    socket_errors = sum(int(x) for x in sockets.groups()) if sockets else 0
    return {
        "rps": rps, "p50_ms": to_ms(percent["50"]), "p99_ms": to_ms(percent["99"]), "requests": requests,
        "non_2xx": int(non2xx.group(1)) if non2xx else 0, "socket_errors": socket_errors,
    }


def peak_rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def reset_peak(pid):
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        pass


def write_report(suffix, fields):
    """Writes bench/results/<UTC date><suffix>.json with the date and the machine; returns its path."""
    stamp = datetime.datetime.now(datetime.timezone.utc)
    report = {"date": stamp.isoformat(timespec="seconds"),
              "machine": {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version()},
              **fields}
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    path = os.path.join(HERE, "results", stamp.strftime("%Y-%m-%d") + suffix + ".json")
    with open(path, "w") as out:
        json.dump(report, out, indent=2)
    return os.path.relpath(path)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("bin")
    parser.add_argument("--duration", default=os.environ.get("BENCH_DURATION", "8s"))
    parser.add_argument("--connections", default=os.environ.get("BENCH_CONNECTIONS", "1,64"))
    args = parser.parse_args()
    connection_counts = [int(c) for c in args.connections.split(",")]

    work = tempfile.mkdtemp(prefix="bench-")
    hello_port, storage_port = free_port(), free_port()
    env = dict(os.environ, HOST="127.0.0.1", LOG_LEVEL="warning")
    hello = subprocess.Popen([os.path.join(args.bin, "bench-hello")], env=dict(env, PORT=str(hello_port)),
                             stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    storage_log = open(os.path.join(work, "storage.log"), "w")
    storage = subprocess.Popen([os.path.join(args.bin, "storage-service")],
                               env=dict(env, PORT=str(storage_port), DATABASE_PATH=os.path.join(work, "bench.db")),
                               stdout=storage_log, stderr=subprocess.STDOUT)
    servers = {"hello": (hello, hello_port), "storage": (storage, storage_port)}
    try:
        wait_listening(hello_port, hello, "bench-hello")
        wait_listening(storage_port, storage, "storage-service")
        seed(storage_port)
        fsync = fsync_probe(work)
        results = []
        for connections in connection_counts:
            for name, server, path, lua in SCENARIOS:
                proc, port = servers[server]
                command = ["wrk", "-t1", f"-c{connections}", f"-d{args.duration}", "--latency"]
                if lua:
                    script = os.path.join(work, "scenario.lua")
                    with open(script, "w") as out:
                        out.write(lua)
                    command += ["-s", script]
                reset_peak(proc.pid)
                output = subprocess.run(command + [f"http://127.0.0.1:{port}{path}"], capture_output=True,
                                        text=True, check=True).stdout
                figures = parse_wrk(output)
                figures.update(scenario=name, connections=connections, peak_rss_kib=peak_rss_kib(proc.pid))
                results.append(figures)
        for figures in results:
            hello_figures = next(r for r in results if r["scenario"].startswith("hello")
                                 and r["connections"] == figures["connections"])
            figures["vs_hello"] = round(figures["rps"] / hello_figures["rps"], 3)
            figures["p50_minus_hello_us"] = round((figures["p50_ms"] - hello_figures["p50_ms"]) * 1000, 1)
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        storage_log.close()
        shutil.rmtree(work, ignore_errors=True)

    print()
    print(f"fsync probe (4 KiB write + fsync, 200 times, database disk): p50 {fsync['p50_ms']} ms, "
          f"p99 {fsync['p99_ms']} ms")
    header = f"{'scenario':26} {'conns':>5} {'req/s':>10} {'vs hello':>8} {'p50 ms':>8} {'p99 ms':>8} " \
             f"{'errors':>7} {'peak RSS MiB':>12}"
    print(header)
    print("-" * len(header))
    for r in results:
        errors = r["non_2xx"] + r["socket_errors"]
        if r["scenario"].startswith("GET missing"):
            errors = r["socket_errors"]  # every answer is a 404 by design
        print(f"{r['scenario']:26} {r['connections']:>5} {r['rps']:>10.0f} {r['vs_hello']:>8.2f} "
              f"{r['p50_ms']:>8.3f} {r['p99_ms']:>8.3f} {errors:>7} {r['peak_rss_kib'] / 1024:>12.1f}")
    path = write_report("", {"wrk": f"-t1 -d{args.duration}", "fsync_probe": fsync, "results": results})
    print(f"\n(wrk -t1 -d{args.duration}; ratios against the hello world of this run) written to {path}")

if __name__ == "__main__":
    main()
