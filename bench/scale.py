#!/usr/bin/env python3
"""`make bench PROFILE=scale`: the storage service with a million watermarks, against itself empty, same run.

    bench/scale.py BIN_DIR [--sources 1000000] [--history 10000000] [--duration 5s]

Seeds a database with `storage-service seed` (timed; database size per million watermarks), starts the service
on it and on a database of 1,000 watermarks, and measures on both: time from start to a healthy /health,
GET and PUT on 1,000 sources spread over the ids (the HTTP profile's working set: the same load on both
databases), GET of existing watermarks at random over all of them, PUT to every source in turn, /health,
/status and /metrics at 64 connections, a page of the `status` and `stale_after_seconds` list filters, and
peak RSS; then, started again with READ_CACHE_ENTRIES=0, the same random GETs, each of which reads the database
(the database's read path like for like: with the cache on, all 1,000 small sources are cached and few of a
million are). Every figure of the large database is
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
from run import free_port, parse_wrk, peak_rss_kib, write_report  # noqa: E402

# The HTTP profile's working set, 1,000 sources, spread evenly over the database's ids (every `step`-th): the same
# load on a database of a million rows as on one of a thousand. Its PUTs are 30 s ahead of the clock, those to
# every source (which run after them and write some of the same sources) 60 s: never older than what a source
# holds.
def lua_get(source):
    """GETs of the source id `source` (a Lua expression of `math.random`, seeded alike on every run)."""
    return """
math.randomseed(42)
request = function()
  return wrk.format("GET", "/api/v1/watermarks/seed-" .. (SOURCE))
end
""".replace("SOURCE", source)


def lua_put(ahead, source):
    """PUTs of increasing timestamps `ahead` seconds past the clock, each to the source id `source` (a Lua
    expression of `counter`, the request's number)."""
    return """
counter = 0
base = os.date("!%Y-%m-%dT%H:%M:%S", os.time() + AHEAD)
request = function()
  counter = counter + 1
  local body = '{"timestamp":"' .. base .. '.' .. string.format("%09d", counter) .. 'Z","status":"success","records_collected":1}'
  return wrk.format("PUT", "/api/v1/watermarks/seed-" .. (SOURCE), {["Content-Type"] = "application/json"}, body)
end
""".replace("AHEAD", str(ahead)).replace("SOURCE", source)


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


def measure(binary, database, sources, work, duration):
    proc, port, healthy = start_service(binary, database, work)
    figures = {"healthy_after_s": round(healthy, 3)}
    try:
        step = max(1, sources // 1000)
        # Warm-up, not reported: the first wrk run after a start paid for the service's cold start (the small
        # database's first GETs at 0.75 of its later rate).
        run_wrk(port, lua_get(f"math.random(0, 999) * {step}"), "/", work, "1s")
        for name, lua, url in [
            ("GET 1,000 of the sources", lua_get(f"math.random(0, 999) * {step}"), "/"),
            ("PUT 1,000 of the sources", lua_put(30, f"(counter % 1000) * {step}"), "/"),
            ("GET existing", lua_get(f"math.random(0, {sources - 1})"), "/"),
            ("PUT many sources", lua_put(60, f"counter % {sources}"), "/"),
            ("GET /health", None, "/health"), ("GET /status", None, "/status"), ("GET /metrics", None, "/metrics"),
        ]:
            figures[name] = run_wrk(port, lua, url, work, duration)
        figures["list status=failed (ms)"] = timed_get(port, "/api/v1/watermarks?status=failed&limit=100")
        figures["list stale_after_seconds=7200 (ms)"] = timed_get(
            port, "/api/v1/watermarks?stale_after_seconds=7200&limit=100")
        figures["peak_rss_mib"] = round(peak_rss_kib(proc.pid) / 1024, 1)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    # The database's own read path, like for like: the same random GETs with READ_CACHE_ENTRIES=0, so every one
    # reads the database (with the cache on, all 1,000 small sources are cached and few of a million are).
    proc, port, _ = start_service(binary, dict(database, READ_CACHE_ENTRIES="0"), work)
    try:
        figures["GET existing, read cache off"] = run_wrk(
            port, lua_get(f"math.random(0, {sources - 1})"), "/", work, duration)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return figures


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


def print_table(title, small, large, sources):
    header = f"{'figure':36} {'1,000 sources':>14} {f'{sources:,} sources':>18} {'ratio':>7}"
    print()
    print(title)
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
        # None: no request completed within wrk's timeout (2 s).
        ratio = f"{b / a:>7.2f}" if a and b is not None else f"{'-':>7}"
        print(f"{name:36} {'-' if a is None else a:>14} {'-' if b is None else b:>18} {ratio}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("bin")
    parser.add_argument("--sources", type=int, default=int(os.environ.get("BENCH_SOURCES", "1000000")))
    parser.add_argument("--history", type=int, default=int(os.environ.get("BENCH_HISTORY", "10000000")))
    parser.add_argument("--duration", default=os.environ.get("BENCH_DURATION", "5s"))
    parser.add_argument("--backends", default=os.environ.get("BENCH_BACKENDS", "sqlite,postgres"),
                        help="sqlite, postgres or both")
    args = parser.parse_args()
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if set(backends) - {"sqlite", "postgres"} or not backends:
        sys.exit(f"bench: BENCH_BACKENDS must list sqlite and/or postgres (got {args.backends})")
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
            small = measure(binary, {"DATABASE_PATH": small_path}, 1000, work, args.duration)
            large = measure(binary, {"DATABASE_PATH": large_path}, args.sources, work, args.duration)
            print_table("SQLite, one process", small, large, args.sources)
            report.update({
                "seed_seconds": round(seconds, 1), "database_mib": round(size / 2**20, 1),
                "mib_per_million_watermarks": round(size / 2**20 / millions, 1),
                "wrk": f"-t1 -c64 -d{args.duration}", "small": small, "large": large})
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
                small = measure(binary, {"DATABASE_URL": small_url}, 1000, work, args.duration)
                large = measure(binary, {"DATABASE_URL": url}, args.sources, work, args.duration)
                print_table(f"PostgreSQL {server.version}, one process", small, large, args.sources)
                report["postgres"] = {
                    "postgres_version": server.version, "replicas": 1, "seed_seconds": round(seconds, 1),
                    "migrate_seconds": round(migrated, 1), "database_mib": round(size / 2**20, 1),
                    "mib_per_million_watermarks": round(size / 2**20 / millions, 1),
                    "tables_mib": round(tables / 2**20, 1), "wrk": f"-t1 -c64 -d{args.duration}",
                    "small": small, "large": large}
    finally:
        shutil.rmtree(work, ignore_errors=True)

    path = write_report("-scale", report)
    print(f"\n(wrk -t1 -c64 -d{args.duration}) written to {path}")


if __name__ == "__main__":
    main()
