#!/usr/bin/env python3
"""`make bench`: the storage service under wrk, every figure a ratio to a Hummingbird hello world of the same run.

    bench/run.py BIN_DIR [--duration 4s] [--rounds 3] [--connections 1,64] [--backends sqlite,postgres]

Starts `bench-hello` (release build in BIN_DIR) on a free port of 127.0.0.1, probes the fsync latency of the disk
that holds the databases, then measures `storage-service` with each scenario at each connection count, one
variant after the other (only one variant's processes run at a time):

  - sqlite: one process on a SQLite file (DATABASE_PATH in a temporary folder);
  - postgres x1: one process on a PostgreSQL of its own (bench/pg.py: Debian's binaries, started like the
    tests' PostgresTestServer, fsync on, stopped at the end);
  - postgres x2: two processes on one database of that server (the replicas of a deployment).

Each variant starts on a fresh database seeded with the same 1000 watermarks and is measured in rounds
(`measure_rounds`): in each round, per connection count, the hello world then every scenario, each ratio taken
against the hello just before it; the table shows the median of the rounds and the JSON keeps each round. Load
comes from `wrk -t1` (the machine has 2 cores: one wrk thread for the load, one core for the server; one thread
per wrk process). Two replicas get two such wrk processes at once, one per replica, each with half the
connections (see `run_wrk`). Prints one table per variant and a comparison, and writes
bench/results/<UTC date>.json (BENCH_RESULTS_DIR overrides the folder). It reports; it never asserts.
BENCH_BACKENDS (sqlite,postgres) picks the backends; postgres runs both one and two replicas. BENCH_DURATION
(4s) is one wrk run, BENCH_ROUNDS (3) the number of rounds.
"""
import argparse
import contextlib
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
sys.path.insert(0, HERE)
import pg  # noqa: E402 (bench/pg.py: a throwaway PostgreSQL)

# Every script starts with this. With two replicas, two wrk processes run the same script at once, each given
# its number and the count after `--` (`-- 0 2`, `-- 1 2`): generator `offset` of `step` numbers its requests
# offset + step, offset + 2*step, ..., so no two generators send the same write (the sources of PUT many split
# between them, each seeing increasing timestamps), and seeds its random numbers with `seed + offset`. Without
# arguments (one generator) the requests are the same as before replicas existed.
LUA_PRELUDE = """
offset, step, seed, counter = 0, 1, 0, 0
init = function(args)
  if #args >= 2 then offset, step = tonumber(args[1]), tonumber(args[2]) end
  math.randomseed(seed + offset)
end
next_id = function()
  counter = counter + 1
  return offset + counter * step
end
"""
LUA_GET_EXISTING = """
seed = 42
request = function()
  return wrk.format("GET", "/api/v1/watermarks/bench-" .. math.random(0, 999))
end
"""
LUA_GET_MISSING = """
seed = 43
request = function()
  return wrk.format("GET", "/api/v1/watermarks/missing-" .. math.random(0, 999999))
end
"""
# Timestamps grow within a run (a nanosecond a request) and from one run to the next (the base is an hour
# before the start of the run), so no write is a regression; 1000 sources.
LUA_PUT_MANY = """
base = os.date("!%Y-%m-%dT%H:%M:%S", os.time() - 3600)
request = function()
  local id = next_id()
  local body = '{"timestamp":"' .. base .. '.' .. string.format("%09d", id) .. 'Z","status":"success","records_collected":1}'
  return wrk.format("PUT", "/api/v1/watermarks/bench-" .. (id % 1000), {["Content-Type"] = "application/json"}, body)
end
"""
# One source: concurrent writes may arrive out of order, so the deliberate-backfill flag keeps them all 2xx.
LUA_PUT_HOT = """
request = function()
  local body = '{"timestamp":"2025-02-01T00:00:00.' .. string.format("%09d", next_id()) .. 'Z","status":"success","records_collected":1}'
  return wrk.format("PUT", "/api/v1/watermarks/bench-hot?force=true", {["Content-Type"] = "application/json"}, body)
end
"""
LUA_MIX = """
seed = 44
request = function()
  local id = next_id()
  if counter % 10 == 0 then
    local body = '{"timestamp":"2025-03-01T00:00:00.' .. string.format("%09d", id) .. 'Z","status":"success","records_collected":1}'
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


def wait_listening(port, proc, what, log=None):
    """Waits until `proc` accepts connections on `port`; exits with the tail of `log` (a path) when it does not."""
    def fail(why):
        tail = ""
        if log and os.path.exists(log):
            with open(log, errors="replace") as out:
                tail = "\n" + out.read()[-2000:]
        sys.exit(f"bench: {what} {why}{tail}")

    deadline = time.time() + 30
    while time.time() < deadline:
        if proc.poll() is not None:
            fail(f"exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    fail(f"did not listen on {port}")


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


def worst(values):
    """The largest latency; None (no request completed) is the worst of all."""
    values = list(values)
    return None if None in values else max(values)


def ms(value):
    """A latency for the tables: '-' when no request completed."""
    return "-" if value is None else f"{value:.3f}"


def parse_wrk(output):
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    percent = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", output, re.M))
    requests = int(re.search(r"(\d+) requests in", output).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    socket_errors = sum(int(x) for x in sockets.groups()) if sockets else 0
    return {
        # No latency distribution when no request completed (every one past wrk's timeout): None, not a crash.
        "rps": rps, "p50_ms": to_ms(percent["50"]) if "50" in percent else None,
        "p99_ms": to_ms(percent["99"]) if "99" in percent else None, "requests": requests,
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
    """Writes bench/results/<UTC date><suffix>.json (BENCH_RESULTS_DIR: another folder, e.g. for a smoke run)
    with the date and the machine; returns its path."""
    stamp = datetime.datetime.now(datetime.timezone.utc)
    report = {"date": stamp.isoformat(timespec="seconds"),
              "machine": {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version()},
              **fields}
    folder = os.environ.get("BENCH_RESULTS_DIR") or os.path.join(HERE, "results")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, stamp.strftime("%Y-%m-%d") + suffix + ".json")
    with open(path, "w") as out:
        json.dump(report, out, indent=2)
    return os.path.relpath(path) if os.path.abspath(path).startswith(os.getcwd() + os.sep) else path



def stop(procs):
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def storage_processes(bin_dir, work, tag, database_env, replicas):
    """Starts `replicas` storage-service processes on the same database (`database_env`: DATABASE_PATH or
    DATABASE_URL), one after the other (the first has migrated the database before the second starts), each on
    a free port; yields [(process, port)]; stops them all at the end, also on failure."""
    started, logs = [], []
    try:
        for index in range(replicas):
            port = free_port()
            log_path = os.path.join(work, f"storage-{tag}-{index}.log")
            log = open(log_path, "w")
            logs.append(log)
            env = dict(os.environ, HOST="127.0.0.1", LOG_LEVEL="warning", PORT=str(port), **database_env)
            proc = subprocess.Popen([os.path.join(bin_dir, "storage-service")], env=env, stdout=log,
                                    stderr=subprocess.STDOUT)
            started.append((proc, port))
            wait_listening(port, proc, f"storage-service ({tag}, replica {index + 1})", log_path)
        yield started
    finally:
        stop([proc for proc, _ in started])
        for log in logs:
            log.close()


def run_wrk(ports, connections, duration, path, script):
    """One wrk measurement against the servers on `ports`.

    One port: `wrk -t1 -cN`, as always. Several (replicas): one `wrk -t1` process per replica, all started at
    once, connections split evenly between them (64 over two: 32 and 32), each process given its number so
    that its writes differ from the others' (LUA_PRELUDE). A wrk process is one thread, the rule on this
    2-core machine, and a wrk thread can only talk to one address, hence processes rather than `-t2`. The
    figures combine: req/s, requests and errors add up; p50 and p99 are the worse of the processes' (wrk does
    not print its histograms, so exact percentiles of the union are not available). With fewer connections
    than replicas (1 connection over two) the extra replicas get none: one connection reaches one replica.
    """
    split = [connections // len(ports) + (1 if i < connections % len(ports) else 0) for i in range(len(ports))]
    targets = [(port, count) for port, count in zip(ports, split) if count > 0]
    procs = []
    for index, (port, count) in enumerate(targets):
        command = ["wrk", "-t1", f"-c{count}", f"-d{duration}", "--latency"]
        if script:
            command += ["-s", script]
        command.append(f"http://127.0.0.1:{port}{path}")
        if script:
            command += ["--", str(index), str(len(targets))]
        procs.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = []
    for proc in procs:
        out, err = proc.communicate()
        if proc.returncode != 0:
            sys.exit(f"bench: wrk exited with {proc.returncode}: {err.strip()}")
        outputs.append(parse_wrk(out))
    figures = {
        "rps": round(sum(o["rps"] for o in outputs), 2),
        "p50_ms": worst(o["p50_ms"] for o in outputs), "p99_ms": worst(o["p99_ms"] for o in outputs),
        "requests": sum(o["requests"] for o in outputs), "non_2xx": sum(o["non_2xx"] for o in outputs),
        "socket_errors": sum(o["socket_errors"] for o in outputs),
    }
    if len(ports) > 1:
        figures["wrk_split"] = [count for _, count in targets]
    return figures


def measure(servers, connections, duration, work, only):
    """Every scenario of server kind `only` at `connections` against `servers` ([(process, port)]), with the
    peak RSS of the processes added up."""
    results = []
    script = os.path.join(work, "scenario.lua")
    for name, server, path, lua in SCENARIOS:
        if server != only:
            continue
        if lua:
            with open(script, "w") as out:
                out.write(LUA_PRELUDE + lua)
        for proc, _ in servers:
            reset_peak(proc.pid)
        figures = run_wrk([port for _, port in servers], connections, duration, path, script if lua else None)
        rss = [peak_rss_kib(proc.pid) for proc, _ in servers]
        figures.update(scenario=name, connections=connections, peak_rss_kib=sum(rss))
        if len(rss) > 1:
            figures["peak_rss_kib_each"] = rss
        results.append(figures)
    return results


def median(values):
    values = list(values)
    return None if None in values else statistics.median(values)


def summarize(each):
    """One figure from the rounds `each` (wrk figures, maybe with ratios): the median of req/s, p50, p99 and of the
    ratios taken within each round, the errors and requests of all rounds, the largest peak RSS, and every round
    under "rounds"."""
    row = {}
    for field in ("rps", "p50_ms", "p99_ms", "vs_hello", "p50_minus_hello_us", "ratio"):
        if field in each[0]:
            value = median(r[field] for r in each)
            row[field] = None if value is None else round(value, 3 if field != "rps" else 2)
    for field in ("requests", "non_2xx", "socket_errors"):
        row[field] = sum(r[field] for r in each)
    if "peak_rss_kib" in each[0]:
        row["peak_rss_kib"] = max(r["peak_rss_kib"] for r in each)
    if "wrk_split" in each[0]:
        row["wrk_split"] = each[0]["wrk_split"]
    if "peak_rss_kib_each" in each[0]:
        row["peak_rss_kib_each"] = [max(v) for v in zip(*(r["peak_rss_kib_each"] for r in each))]
    row["rounds"] = [{k: v for k, v in r.items() if k not in ("scenario", "connections")} for r in each]
    return row


def measure_rounds(hello, servers, connection_counts, duration, rounds, work):
    """`rounds` rounds of: per connection count, the hello world (`hello`: [(process, port)]) then every scenario
    of the service (`servers`). Returns (hello rows, service rows), one row per scenario and connection count:
    the median of the rounds (req/s, p50, p99, and each ratio to hello taken within its round, against the hello
    measured just before), the worst round's errors and peak RSS, and every round under "rounds".

    The speed of this machine drifts within minutes (CPU shared with other machines, disk flushes), so a hello
    measured once at the start and a scenario measured two minutes later can differ by 20 % for no reason of the
    service's: the same code gave a GET at 64 connections of 0.76 and of 1.03 of hello in two runs of one day.
    Interleaved rounds put each figure next to its baseline, and the median of three drops one odd round.
    """
    per_key = {}  # (scenario, connections) -> [figures of each round]
    for _ in range(rounds):
        for connections in connection_counts:
            base = measure(hello, connections, duration, work, "hello")[0]
            base["vs_hello"] = 1.0
            base["p50_minus_hello_us"] = 0.0
            per_key.setdefault((base["scenario"], connections), []).append(base)
            for figures in measure(servers, connections, duration, work, "storage"):
                figures["vs_hello"] = round(figures["rps"] / base["rps"], 3)
                figures["p50_minus_hello_us"] = (
                    round((figures["p50_ms"] - base["p50_ms"]) * 1000, 1)
                    if figures["p50_ms"] is not None and base["p50_ms"] is not None else None)
                per_key.setdefault((figures["scenario"], connections), []).append(figures)
    rows = [dict(scenario=scenario, connections=connections, **summarize(each))
            for (scenario, connections), each in per_key.items()]
    hello_rows = [r for r in rows if r["scenario"] == "hello (baseline)"]
    return hello_rows, [r for r in rows if r["scenario"] != "hello (baseline)"]


def errors(row):
    if row["scenario"].startswith("GET missing"):
        return row["socket_errors"]  # every answer is a 404 by design
    return row["non_2xx"] + row["socket_errors"]


def print_table(title, rows):
    print(f"\n{title}")
    header = f"{'scenario':26} {'conns':>5} {'req/s':>10} {'vs hello':>8} {'p50 ms':>8} {'p99 ms':>8} " \
             f"{'errors':>7} {'peak RSS MiB':>12}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['scenario']:26} {r['connections']:>5} {r['rps']:>10.0f} {r['vs_hello']:>8.2f} "
              f"{ms(r['p50_ms']):>8} {ms(r['p99_ms']):>8} {errors(r):>7} {r['peak_rss_kib'] / 1024:>12.1f}")


def print_comparison(variants):
    """One line per scenario and connection count: each variant's ratio to hello, then its p99."""
    names = [v["label"] for v in variants]
    width = max(9, *(len(n) for n in names))
    print("\ncomparison: req/s as a ratio to hello | p99 ms")
    header = f"{'scenario':26} {'conns':>5} " + " ".join(f"{n:>{width}}" for n in names) + " | " + \
        " ".join(f"{n:>{width}}" for n in names)
    print(header)
    print("-" * len(header))
    for key_row in variants[0]["results"]:
        key = (key_row["scenario"], key_row["connections"])
        rows = [next(r for r in v["results"] if (r["scenario"], r["connections"]) == key) for v in variants]
        print(f"{key[0]:26} {key[1]:>5} " + " ".join(f"{r['vs_hello']:>{width}.2f}" for r in rows) + " | " +
              " ".join(f"{ms(r['p99_ms']):>{width}}" for r in rows))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("bin")
    parser.add_argument("--duration", default=os.environ.get("BENCH_DURATION", "4s"))
    parser.add_argument("--rounds", type=int, default=int(os.environ.get("BENCH_ROUNDS", "3")))
    parser.add_argument("--connections", default=os.environ.get("BENCH_CONNECTIONS", "1,64"))
    parser.add_argument("--backends", default=os.environ.get("BENCH_BACKENDS", "sqlite,postgres"),
                        help="sqlite, postgres or both; postgres measures one and two replicas")
    args = parser.parse_args()
    connection_counts = [int(c) for c in args.connections.split(",")]
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = set(backends) - {"sqlite", "postgres"}
    if unknown or not backends:
        sys.exit(f"bench: BENCH_BACKENDS must list sqlite and/or postgres (got {args.backends})")
    if args.rounds < 1:
        sys.exit(f"bench: BENCH_ROUNDS must be 1 or more (got {args.rounds})")

    work = tempfile.mkdtemp(prefix="bench-")
    hello_port = free_port()
    hello = subprocess.Popen([os.path.join(args.bin, "bench-hello")],
                             env=dict(os.environ, HOST="127.0.0.1", LOG_LEVEL="warning", PORT=str(hello_port)),
                             stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    variants = []  # {"backend", "replicas", "label", "hello", "results"}

    def run_variant(servers, **fields):
        seed(servers[0][1])
        hello_rows, rows = measure_rounds([(hello, hello_port)], servers, connection_counts, args.duration,
                                          args.rounds, work)
        for row in rows:
            row.update(backend=fields["backend"], replicas=fields["replicas"])
        variants.append(dict(fields, hello=hello_rows, results=rows))

    try:
        wait_listening(hello_port, hello, "bench-hello")
        fsync = fsync_probe(work)  # the temporary folder holds the SQLite file and PostgreSQL's data alike
        if "sqlite" in backends:
            database = {"DATABASE_PATH": os.path.join(work, "bench.db")}
            with storage_processes(args.bin, work, "sqlite", database, 1) as servers:
                run_variant(servers, backend="sqlite", replicas=1, label="SQLite")
        if "postgres" in backends:
            with pg.postgres() as server:
                for replicas in (1, 2):
                    # A fresh database each, so the second variant does not start with the first's writes.
                    database = {"DATABASE_URL": server.create_database(f"bench_x{replicas}")}
                    with storage_processes(args.bin, work, f"pg-x{replicas}", database, replicas) as servers:
                        run_variant(servers, backend="postgres", replicas=replicas, label=f"PG x{replicas}",
                                    postgres_version=server.version)
    finally:
        stop([hello])
        shutil.rmtree(work, ignore_errors=True)

    def with_hello(variant):
        """Per connection count, the hello row then the service's."""
        return [r for c in connection_counts
                for r in [h for h in variant["hello"] if h["connections"] == c]
                + [x for x in variant["results"] if x["connections"] == c]]

    print()
    print(f"fsync probe (4 KiB write + fsync, 200 times, database disk): p50 {fsync['p50_ms']} ms, "
          f"p99 {fsync['p99_ms']} ms")
    print(f"each figure: the median of {args.rounds} rounds of wrk -t1 -d{args.duration}, every scenario right after "
          f"a hello of its round (ratios taken within the round)")
    for variant in variants:
        title = {"sqlite": "SQLite, one process",
                 "postgres": f"PostgreSQL {variant.get('postgres_version', '')}, "
                             f"{'one process' if variant['replicas'] == 1 else 'two processes on one database'}"}
        print_table(title[variant["backend"]], with_hello(variant))
    if len(variants) > 1:
        print_comparison(variants)

    sqlite = next((v for v in variants if v["backend"] == "sqlite"), None)
    report = {
        "wrk": f"-t1 -d{args.duration}",
        "rounds": args.rounds,
        "fsync_probe": fsync,
        # The hello rows and SQLite's (backend "sqlite", replicas 1): medians of the rounds, each round under
        # "rounds".
        "results": with_hello(sqlite) if sqlite else [],
        # PostgreSQL, one entry per number of replicas; two replicas are loaded by one wrk -t1 per replica,
        # connections split between them (wrk_split), req/s summed, p50 and p99 the worse of the two.
        "postgres": [{"backend": v["backend"], "replicas": v["replicas"], "postgres_version": v["postgres_version"],
                      "hello": v["hello"], "results": v["results"]} for v in variants if v["backend"] == "postgres"],
    }
    path = write_report("", report)
    print(f"\n(wrk -t1 per replica, -d{args.duration}, median of {args.rounds} rounds; ratios against the hello "
          f"world of each round) written to {path}")


if __name__ == "__main__":
    main()
