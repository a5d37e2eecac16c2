#!/usr/bin/env python3
"""`make bench PROFILE=scale`: the storage service with a million watermarks, against itself empty, same run.

    bench/scale.py BIN_DIR [--sources 1000000] [--history 10000000] [--duration 4s] [--rounds 3]

Seeds a database with `storage-service seed` (timed; database size per million watermarks), starts the service
on it and on a database of 1,000 watermarks, and measures on both: time from start to a healthy /health,
GET and PUT on 1,000 sources spread over the ids (the HTTP profile's working set: the same load on both
databases), GET of existing watermarks at random over all of them, PUT to every source in turn, /health,
/status and /metrics at 64 connections, a page of the `status` and `stale_after_seconds` list filters, and
peak RSS; then, started again with READ_CACHE_ENTRIES=0, the same random GETs, each of which reads the database
(the database's read path like for like: with the cache on, all 1,000 small sources are cached and few of a
million are). Both databases are served at once and measured in rounds (BENCH_ROUNDS, 3): in each, every load
on the small database and right after on the large one; each figure is the median of the rounds and the ratio of
req/s (large over small) the median of the rounds' ratios. Every figure of the large database is
also given as a ratio to the small one. Prints a table and writes bench/results/<UTC date>-scale.json
(BENCH_RESULTS_DIR overrides the folder). It reports; it never asserts.

Then the same on PostgreSQL (one process on a throwaway server, bench/pg.py, fsync on): the service is started
once on each empty database to apply its migrations, stopped, and the rows are written by one psql session
(`INSERT ... SELECT ... FROM generate_series`, the same ids, statuses, timestamps and versions as
`storage-service seed`, then ANALYZE; timed, database size per million watermarks from pg_database_size).
Its figures go under the `postgres` key of the JSON; peak RSS is the service's, not the server's.
BENCH_BACKENDS (sqlite,postgres) picks the backends.
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
import pg  # noqa: E402 (bench/pg.py: a throwaway PostgreSQL)
from run import free_port, median, parse_wrk, peak_rss_kib, stop, summarize, write_report  # noqa: E402

# The HTTP profile's working set, 1,000 sources, spread evenly over the database's ids (every `step`-th): the same
# load on a database of a million rows as on one of a thousand. Every PUT script starts its timestamps 30 s past the
# clock of its start, in whole seconds, and adds a nanosecond a request: a script starts at least a second after the
# one before it started (a wrk run lasts a second or more), so its first timestamp is later than all of the earlier
# scripts' writes, round after round, whichever sources they wrote; 30 s is within the service's 300 s tolerance of
# future timestamps.
def lua_get(source):
    """GETs of the source id `source` (a Lua expression of `math.random`, seeded alike on every run)."""
    return """
math.randomseed(42)
request = function()
  return wrk.format("GET", "/api/v1/watermarks/seed-" .. (SOURCE))
end
""".replace("SOURCE", source)


def lua_put(source):
    """PUTs of increasing timestamps 30 s past the clock, each to the source id `source` (a Lua expression of
    `counter`, the request's number)."""
    return """
counter = 0
base = os.date("!%Y-%m-%dT%H:%M:%S", os.time() + 30)
request = function()
  counter = counter + 1
  local body = '{"timestamp":"' .. base .. '.' .. string.format("%09d", counter) .. 'Z","status":"success","records_collected":1}'
  return wrk.format("PUT", "/api/v1/watermarks/seed-" .. (SOURCE), {["Content-Type"] = "application/json"}, body)
end
""".replace("SOURCE", source)


def seed(binary, path, sources, history):
    start = time.perf_counter()
    subprocess.run([binary, "seed", "--database-path", path, "--sources", str(sources), "--history", str(history)],
                   check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


# The rows of WatermarkSeeder.swift (`storage-service seed`) in SQL. Source i is 'seed-<i>' with `runs` runs
# (versions 1...runs, the watermark at version `runs`); one in a hundred failed, one in a hundred last succeeded
# a day ago, the others within the last hour. `ts` formats whole seconds of an epoch plus the fixed
# nanoseconds of the seed's `now` as Timestamp.sortableString: YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ, in UTC.
PG_SEED = """
SET synchronous_commit = off;
CREATE FUNCTION pg_temp.ts(seconds bigint) RETURNS text LANGUAGE sql STABLE AS
  $$ SELECT to_char(to_timestamp(seconds) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS') || '.{nanos:09d}Z' $$;
-- Bulk load: the counting trigger (migration v2-counts) is off for it, and the counts are then filled from the rows as
-- that migration fills them (a million row-by-row counter updates in one transaction would take minutes).
ALTER TABLE watermark DISABLE TRIGGER USER;
INSERT INTO watermark (source_id, last_successful_timestamp, last_run_timestamp, status, records_collected,
                       error_message, version, consecutive_failures, created_at)
SELECT 'seed-' || i, pg_temp.ts({now} - age), pg_temp.ts({now} - age),
       CASE WHEN i % 100 = 1 THEN 'failed' ELSE 'success' END, runs * 100,
       CASE WHEN i % 100 = 1 THEN 'seeded failure' END, runs, CASE WHEN i % 100 = 1 THEN 1 ELSE 0 END,
       pg_temp.ts({now} - age - runs * 60)
FROM ({sources_sql}) AS s;
ALTER TABLE watermark ENABLE TRIGGER USER;
UPDATE watermark_count c SET total = n.total, failed = n.failed
FROM (SELECT b, COUNT(w.source_id) AS total, COUNT(w.source_id) FILTER (WHERE w.status = 'failed') AS failed
      FROM generate_series(0, 15) AS b LEFT JOIN watermark w ON (hashtext(w.source_id) & 15) = b GROUP BY b) AS n
WHERE c.bucket = n.b;
DELETE FROM success_hour;
INSERT INTO success_hour (hour, bucket, sources)
SELECT COALESCE(substr(last_successful_timestamp, 1, 13), ''), hashtext(source_id) & 15, COUNT(*)
FROM watermark GROUP BY 1, 2;
INSERT INTO watermark_run (source_id, version, recorded_at, status, "timestamp", last_successful_timestamp,
                           records_collected, error_message)
SELECT 'seed-' || s.i, v, t.at, 'success', t.at, t.at, 100, NULL
FROM ({sources_sql}) AS s
CROSS JOIN LATERAL generate_series(1::bigint, s.runs) AS v
CROSS JOIN LATERAL (SELECT pg_temp.ts({now} - s.age - (s.runs - v) * 60) AS at) AS t;
ANALYZE;
"""
PG_SOURCES = """SELECT i, GREATEST(1, {per} + CASE WHEN i < {extra} THEN 1 ELSE 0 END)::bigint AS runs,
       (CASE WHEN i % 100 = 2 THEN 86400 ELSE i % 3600 END)::bigint AS age
FROM generate_series(0::bigint, {last}) AS i"""


def seed_postgres(server, binary, work, name, sources, history):
    """Creates database `name`, lets the service migrate it, fills it with SQL; returns (url, migrate seconds,
    seed seconds, database bytes, bytes of the watermark and watermark_run tables)."""
    url = server.create_database(name)
    proc, _, migrated = start_service(binary, {"DATABASE_URL": url}, work)
    proc.terminate()
    proc.wait(timeout=30)
    per, extra = (history // sources, history % sources) if sources else (0, 0)
    now = time.time_ns()
    sql = PG_SEED.format(now=now // 10**9, nanos=now % 10**9,
                         sources_sql=PG_SOURCES.format(per=per, extra=extra, last=sources - 1))
    script = os.path.join(server.directory, f"seed-{name}.sql")  # the server's folder: readable by its user
    with open(script, "w") as out:
        out.write(sql)
    os.chmod(script, 0o644)
    start = time.perf_counter()
    server.psql(name, "-f", script)
    seconds = time.perf_counter() - start
    database, tables = (int(x) for x in server.psql(
        name, "-At", "-F", " ", "-c", "SELECT pg_database_size(current_database()), "
        "pg_total_relation_size('watermark') + pg_total_relation_size('watermark_run')").split())
    return url, migrated, seconds, database, tables


def start_service(binary, database, work):
    """Starts the service with `database` ({"DATABASE_PATH": ...} or {"DATABASE_URL": ...}) in its environment."""
    port = free_port()
    env = dict(os.environ, HOST="127.0.0.1", LOG_LEVEL="warning", PORT=str(port), **database)
    env.pop("DATABASE_URL" if "DATABASE_PATH" in database else "DATABASE_PATH", None)
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


def scenarios(sources):
    """(name, Lua script or None, path) of each load at 64 connections, for a database of `sources` watermarks."""
    step = max(1, sources // 1000)
    return [
        ("GET 1,000 of the sources", lua_get(f"math.random(0, 999) * {step}"), "/"),
        ("PUT 1,000 of the sources", lua_put(f"(counter % 1000) * {step}"), "/"),
        ("GET existing", lua_get(f"math.random(0, {sources - 1})"), "/"),
        ("PUT many sources", lua_put(f"counter % {sources}"), "/"),
        ("GET /health", None, "/health"), ("GET /status", None, "/status"), ("GET /metrics", None, "/metrics"),
    ]


def measure(binary, databases, work, duration, rounds):
    """The small and the large database side by side: `databases` is {"small": (environment, sources), "large":
    (...)}. Both services run at once; in each of `rounds` rounds every load runs on the small one and right after
    on the large one, and its ratio (large over small) is taken within the round. Returns {"small": figures,
    "large": figures, "ratios": {load: median ratio of req/s}}, each load's figures the median of the rounds
    (run.summarize), every round kept. A database measured whole before the other put minutes between the two
    figures of a ratio, and this machine's speed drifts by 10-20 % within minutes: PUT to the 1,000 sources read
    0.92, 0.74 and 0.69 of the small database in three runs of the same code.

    Then, both started again with READ_CACHE_ENTRIES=0, the same random GETs, each of which reads the database
    (the database's read path like for like: with the cache on, all 1,000 small sources are cached and few of a
    million are)."""
    figures = {key: {} for key in databases}
    ratios = {}

    def rounds_of(loads, servers):
        each = {key: {} for key in databases}
        for _ in range(rounds):
            for index in range(len(loads["small"])):
                round_rps = {}
                for key in databases:
                    name, lua, url = loads[key][index]
                    result = run_wrk(servers[key][1], lua, url, work, duration)
                    each[key].setdefault(name, []).append(result)
                    round_rps[key] = result["rps"]
                ratios.setdefault(name, []).append(
                    round_rps["large"] / round_rps["small"] if round_rps["small"] else None)
        for key in databases:
            for name, results in each[key].items():
                figures[key][name] = summarize(results)

    servers = {}
    try:
        for key, (database, _) in databases.items():
            proc, port, healthy = start_service(binary, database, work)
            servers[key] = (proc, port)
            figures[key]["healthy_after_s"] = round(healthy, 3)
        for key, (_, sources) in databases.items():
            # Warm-up, not reported: the first wrk run after a start paid for the service's cold start (the small
            # database's first GETs at 0.75 of its later rate).
            run_wrk(servers[key][1], scenarios(sources)[0][1], "/", work, "1s")
        rounds_of({key: scenarios(sources) for key, (_, sources) in databases.items()}, servers)
        for key in databases:
            port = servers[key][1]
            figures[key]["list status=failed (ms)"] = timed_get(port, "/api/v1/watermarks?status=failed&limit=100")
            figures[key]["list stale_after_seconds=7200 (ms)"] = timed_get(
                port, "/api/v1/watermarks?stale_after_seconds=7200&limit=100")
            figures[key]["peak_rss_mib"] = round(peak_rss_kib(servers[key][0].pid) / 1024, 1)
    finally:
        stop([proc for proc, _ in servers.values()])
    servers = {}
    try:
        for key, (database, _) in databases.items():
            proc, port, _ = start_service(binary, dict(database, READ_CACHE_ENTRIES="0"), work)
            servers[key] = (proc, port)
        rounds_of({key: [("GET existing, read cache off", lua_get(f"math.random(0, {sources - 1})"), "/")]
                   for key, (_, sources) in databases.items()}, servers)
    finally:
        stop([proc for proc, _ in servers.values()])
    return {"small": figures["small"], "large": figures["large"],
            "ratios": {name: None if None in values else round(median(values), 3) for name, values in ratios.items()}}


def run_wrk(port, lua, url, work, duration):
    """One wrk run at 64 connections against the service on `port`, with the Lua script `lua` if any."""
    command = ["wrk", "-t1", "-c64", f"-d{duration}", "--latency"]
    if lua:
        script = os.path.join(work, "scenario.lua")
        with open(script, "w") as out:
            out.write(lua)
        command += ["-s", script]
    output = subprocess.run(command + [f"http://127.0.0.1:{port}{url}"], capture_output=True, text=True,
                            check=True).stdout
    return parse_wrk(output)


def print_table(title, measured, sources, rounds):
    """The figures of both databases; the ratio of req/s is the median of the rounds' ratios, the others are
    large over small."""
    small, large, ratios = measured["small"], measured["large"], measured["ratios"]
    header = f"{'figure':36} {'1,000 sources':>14} {f'{sources:,} sources':>18} {'ratio':>7}"
    print()
    print(f"{title} (median of {rounds} rounds)")
    print(header)
    print("-" * len(header))
    rows = []
    for key in small:
        if isinstance(small[key], dict):
            rows.append((f"{key} req/s", small[key]["rps"], large[key]["rps"], ratios.get(key)))
            rows.append((f"{key} p99 ms", small[key]["p99_ms"], large[key]["p99_ms"], None))
        else:
            rows.append((key, small[key], large[key], None))
    for name, a, b, ratio in rows:
        if ratio is None:
            # None: no request completed within wrk's timeout (2 s).
            ratio = b / a if a and b is not None else None
        shown = f"{ratio:>7.2f}" if ratio is not None else f"{'-':>7}"
        print(f"{name:36} {'-' if a is None else a:>14} {'-' if b is None else b:>18} {shown}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("bin")
    parser.add_argument("--sources", type=int, default=int(os.environ.get("BENCH_SOURCES", "1000000")))
    parser.add_argument("--history", type=int, default=int(os.environ.get("BENCH_HISTORY", "10000000")))
    parser.add_argument("--duration", default=os.environ.get("BENCH_DURATION", "4s"))
    parser.add_argument("--rounds", type=int, default=int(os.environ.get("BENCH_ROUNDS", "3")))
    parser.add_argument("--backends", default=os.environ.get("BENCH_BACKENDS", "sqlite,postgres"),
                        help="sqlite, postgres or both")
    args = parser.parse_args()
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if set(backends) - {"sqlite", "postgres"} or not backends:
        sys.exit(f"bench: BENCH_BACKENDS must list sqlite and/or postgres (got {args.backends})")
    if args.rounds < 1:
        sys.exit(f"bench: BENCH_ROUNDS must be 1 or more (got {args.rounds})")
    if "postgres" in backends and pg.find_binaries() is None:  # before the long SQLite part, not after it
        sys.exit(f"bench: PostgreSQL is not installed (no {pg.ROOT}/*/bin/initdb): run scripts/install-deps.sh, "
                 "or BENCH_BACKENDS=sqlite")
    binary = os.path.join(args.bin, "storage-service")
    millions = args.sources / 1e6
    report = {"sources": args.sources, "history": args.history}
    work = tempfile.mkdtemp(prefix="bench-scale-")
    try:
        if "sqlite" in backends:
            small_path, large_path = os.path.join(work, "small.db"), os.path.join(work, "large.db")
            seed(binary, small_path, 1000, 10000)
            seconds = seed(binary, large_path, args.sources, args.history)
            size = sum(os.path.getsize(large_path + s) for s in ("", "-wal") if os.path.exists(large_path + s))
            print(f"bench: seeded {args.sources} watermarks and {args.history} history rows in {seconds:.0f} s, "
                  f"{size / 2**20:.0f} MiB ({size / 2**20 / millions:.0f} MiB per million watermarks)")
            # The seed writes without syncing: its gigabytes would otherwise be written back by the kernel during
            # the measurements (the first checkpoint's fsync of the large file took 0.6 s), on the disk the commits
            # sync to. Both databases start with nothing left to write.
            os.sync()
            measured = measure(binary, {"small": ({"DATABASE_PATH": small_path}, 1000),
                                        "large": ({"DATABASE_PATH": large_path}, args.sources)},
                               work, args.duration, args.rounds)
            print_table("SQLite, one process", measured, args.sources, args.rounds)
            report.update({
                "seed_seconds": round(seconds, 1), "database_mib": round(size / 2**20, 1),
                "mib_per_million_watermarks": round(size / 2**20 / millions, 1),
                "wrk": f"-t1 -c64 -d{args.duration}", "rounds": args.rounds, **measured})
            for name in os.listdir(work):  # the SQLite files are done with: their disk to PostgreSQL
                if name.startswith(("small.db", "large.db")):
                    os.remove(os.path.join(work, name))
        if "postgres" in backends:
            with pg.postgres() as server:
                small_url = seed_postgres(server, binary, work, "scale_small", 1000, 10000)[0]
                url, migrated, seconds, size, tables = seed_postgres(
                    server, binary, work, "scale_large", args.sources, args.history)
                print(f"\nbench: seeded PostgreSQL {server.version} with {args.sources} watermarks and "
                      f"{args.history} history rows in {seconds:.1f} s of SQL (after {migrated:.1f} s for the "
                      f"service to migrate), {size / 2**20:.0f} MiB ({size / 2**20 / millions:.0f} MiB per million "
                      f"watermarks; the two tables {tables / 2**20:.0f} MiB)")
                measured = measure(binary, {"small": ({"DATABASE_URL": small_url}, 1000),
                                            "large": ({"DATABASE_URL": url}, args.sources)},
                                   work, args.duration, args.rounds)
                print_table(f"PostgreSQL {server.version}, one process", measured, args.sources, args.rounds)
                report["postgres"] = {
                    "postgres_version": server.version, "replicas": 1, "seed_seconds": round(seconds, 1),
                    "migrate_seconds": round(migrated, 1), "database_mib": round(size / 2**20, 1),
                    "mib_per_million_watermarks": round(size / 2**20 / millions, 1),
                    "tables_mib": round(tables / 2**20, 1), "wrk": f"-t1 -c64 -d{args.duration}",
                    "rounds": args.rounds, **measured}
    finally:
        shutil.rmtree(work, ignore_errors=True)

    path = write_report("-scale", report)
    print(f"\n(wrk -t1 -c64 -d{args.duration}, median of {args.rounds} rounds) written to {path}")


if __name__ == "__main__":
    main()
