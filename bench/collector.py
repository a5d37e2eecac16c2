#!/usr/bin/env python3
"""`make bench PROFILE=collector`: the collection path end to end, against a plain-Python loop of the same run.

    bench/collector.py BIN_DIR [--records 1000000] [--sources drop,taxii,drop-small]

Writes a drop folder of STIX indicators (half NDJSON files, half bundles; a few records repeated across files
so dedup has work; several versions of some objects), a second folder of the first tenth of them in files of
five records (`drop-small`: a folder of many small files, half NDJSON, half JSON arrays), serves the same
objects from a fast TAXII-like feed in this process (pre-rendered 1,000-object pages with `next` and the X-TAXII-Date-Added headers), then runs
`collection-service --once` (release build) against a real `storage-service` for each source, and
bench/baseline_collector.py on the same input: records/s into the durable sink, wall time, peak RSS of the
collecting process, and whether every unique (id, version) landed exactly once.
Prints a table and writes bench/results/<UTC date>-collector.json. It reports; it never asserts.
BENCH_WRAP prefixes the service's command line (a profiler: "perf record -g -o /tmp/perf-{name}.data --").
"""
import argparse
import http.server
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from run import free_port, peak_rss_kib, wait_listening, write_report  # noqa: E402

FILES = 20  # ten NDJSON files, ten bundles
PAGE = 1000
SMALL_FILE = 5  # records in each file of the many-small-files folder


def indicator(rng, number, version):
    """A STIX 2.1 indicator of about 560 bytes, like the ones real feeds send."""
    minute, second = divmod(number % 3600, 60)
    return {
        "type": "indicator", "spec_version": "2.1", "id": f"indicator--{number:08d}-0000-4000-8000-{rng.getrandbits(48):012x}",
        "created": "2026-11-01T00:00:00.000Z",
        "modified": f"2026-11-{1 + version:02d}T{number % 24:02d}:{minute:02d}:{second:02d}.{number % 1000:03d}Z",
        "name": f"Malicious IP {number}",
        "description": f"Seen in campaign {number % 977} with infrastructure reused across several intrusion sets",
        "indicator_types": ["malicious-activity"],
        "pattern": f"[ipv4-addr:value = '10.{number % 256}.{(number >> 8) % 256}.{(number >> 16) % 256}']",
        "pattern_type": "stix", "valid_from": "2026-11-01T00:00:00Z", "labels": ["c2", "botnet"], "confidence": 80,
        "object_marking_refs": ["marking-definition--f88d31f6-486f-44da-b317-01333bde0b82"],
    }


def generate(folder, total, seed=20261202):
    """`total` objects in FILES files; returns (lines in file order, unique (id, version) count)."""
    rng = random.Random(seed)
    os.makedirs(folder)
    objects, originals, keys = [], [], set()
    for number in range(total):
        # One object in ten is a second version of an earlier one; one in fifty repeats an earlier record as is.
        if objects and number % 50 == 7:
            objects.append(objects[rng.randrange(len(objects))])
            continue
        if originals and number % 10 == 3:
            record = json.loads(originals[rng.randrange(len(originals))])
            record["modified"] = record["modified"].replace("2026-11-", "2026-12-", 1)
            record["confidence"] = 90
        else:
            record = indicator(rng, number, 0)
        text = json.dumps(record, separators=(",", ":"))
        if record["confidence"] == 80:
            originals.append(text)
        keys.add((record["id"], record["modified"]))
        objects.append(text)
    unique = len(keys)
    per_file = (total + FILES - 1) // FILES
    for index in range(FILES):
        chunk = objects[index * per_file:(index + 1) * per_file]
        if index % 2 == 0:
            with open(os.path.join(folder, f"feed-{index:02d}.ndjson"), "w") as out:
                out.write("\n".join(chunk) + "\n")
        else:
            with open(os.path.join(folder, f"feed-{index:02d}.json"), "w") as out:
                out.write('{"type":"bundle","id":"bundle--%08d","objects":[\n' % index)
                out.write(",\n".join(chunk))
                out.write("\n]}\n")
    return objects, unique


def generate_small(folder, objects):
    """`objects` in files of SMALL_FILE records, alternately NDJSON and JSON arrays; returns the unique count."""
    os.makedirs(folder)
    keys = set()
    for index in range(0, len(objects), SMALL_FILE):
        chunk = objects[index:index + SMALL_FILE]
        for text in chunk:
            record = json.loads(text)
            keys.add((record["id"], record["modified"]))
        number = index // SMALL_FILE
        if number % 2 == 0:
            with open(os.path.join(folder, f"small-{number:07d}.ndjson"), "w") as out:
                out.write("\n".join(chunk) + "\n")
        else:
            with open(os.path.join(folder, f"small-{number:07d}.json"), "w") as out:
                out.write("[" + ",".join(chunk) + "]")
    return len(keys)


class Feed(http.server.ThreadingHTTPServer):
    daemon_threads = True


def serve_feed(objects):
    """A TAXII-like collection: `next` is the page number; every answer is rendered before the clock starts."""
    pages = []
    count = (len(objects) + PAGE - 1) // PAGE
    for index in range(count):
        more = index + 1 < count
        body = ('{"more":%s,%s"objects":[' % ("true" if more else "false", f'"next":"{index + 1}",' if more else "")
                + ",".join(objects[index * PAGE:(index + 1) * PAGE]) + "]}").encode()
        added = lambda n: f"2026-11-20T00:00:{n // 1000000:02d}.{n % 1000000:06d}Z"  # noqa: E731
        pages.append((body, added(index * PAGE + 1), added(index * PAGE + PAGE)))

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
            body, first, last = pages[int(query.get("next", ["0"])[0])]
            self.send_response(200)
            self.send_header("Content-Type", "application/taxii+json;version=2.1")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-TAXII-Date-Added-First", first)
            self.send_header("X-TAXII-Date-Added-Last", last)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = Feed(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def measured(command, env=None):
    """Runs `command`; returns (seconds, peak RSS MiB, exit status). The peak is the child's VmHWM, read every
    10 ms until it exits (wait4's ru_maxrss would count the RSS of this process at the fork).

    Dirty data left in the page cache (the drop folder just written, the previous scenario's files) is written
    out first: the kernel's writeback of it would otherwise share the disk with this command's fsyncs (a TAXII
    run after the drop-folder scenarios took 9.1-9.4 s, alone 6.9 s)."""
    os.sync()
    start = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = 0
    while proc.poll() is None:
        try:
            peak = max(peak, peak_rss_kib(proc.pid))
        except OSError:
            pass
        time.sleep(0.01)
    return time.perf_counter() - start, peak / 1024, proc.returncode


def sink_count(folder):
    lines = 0
    keys = set()
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        with open(os.path.join(folder, name), "rb") as handle:
            for line in handle:
                entry = json.loads(line)
                keys.add((entry["id"], entry["version"]))
                lines += 1
    return lines, len(keys)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("bin")
    parser.add_argument("--records", type=int, default=int(os.environ.get("BENCH_RECORDS", "1000000")))
    parser.add_argument("--sources", default=os.environ.get("BENCH_COLLECTOR_SOURCES", "drop,taxii,drop-small"),
                        help="which sources to measure, comma-separated: drop, taxii, drop-small (default all)")
    args = parser.parse_args()
    chosen = [name.strip() for name in args.sources.split(",") if name.strip()]
    if not chosen or set(chosen) - {"drop", "taxii", "drop-small"}:
        parser.error(f"--sources: expected some of drop, taxii, drop-small, got {args.sources!r}")

    work = tempfile.mkdtemp(prefix="bench-collector-")
    storage = None
    feed = None
    try:
        started = time.perf_counter()
        objects, unique = generate(os.path.join(work, "drop"), args.records)
        size = sum(os.path.getsize(os.path.join(work, "drop", n)) for n in os.listdir(os.path.join(work, "drop")))
        small = objects[:args.records // 10]
        unique_small = generate_small(os.path.join(work, "drop-small"), small) if "drop-small" in chosen else 0
        print(f"bench: {args.records} objects ({unique} unique id+version, {size / 2**20:.0f} MiB), and "
              f"{len(small)} in {(len(small) + SMALL_FILE - 1) // SMALL_FILE} small files, "
              f"written in {time.perf_counter() - started:.0f} s")
        expected = {"drop": unique, "taxii": unique, "drop-small": unique_small}
        feed = serve_feed(objects)
        del objects
        feed_url = f"http://127.0.0.1:{feed.server_address[1]}/taxii2/api1/"

        port = free_port()
        env = dict(os.environ, HOST="127.0.0.1", LOG_LEVEL="warning")
        storage_log = open(os.path.join(work, "storage.log"), "w")
        storage = subprocess.Popen([os.path.join(args.bin, "storage-service")],
                                   env=dict(env, PORT=str(port), DATABASE_PATH=os.path.join(work, "wm.db")),
                                   stdout=storage_log, stderr=subprocess.STDOUT)
        wait_listening(port, storage, "storage-service")

        sources = {
            "drop": {"id": "drop", "type": "directory", "path": os.path.join(work, "drop"), "page_size": PAGE,
                     "lookback_seconds": 315360000},
            "taxii": {"id": "taxii", "type": "taxii21", "api_root": feed_url, "collection_id": "bench",
                      "page_size": PAGE, "lookback_seconds": 315360000, "timeout_seconds": 60},
            "drop-small": {"id": "drop-small", "type": "directory", "path": os.path.join(work, "drop-small"),
                           "page_size": PAGE, "lookback_seconds": 315360000},
        }
        results = []
        for name, source in sources.items():
            if name not in chosen:
                continue
            config = os.path.join(work, f"{name}.json")
            with open(config, "w") as out:
                json.dump({"sources": [source]}, out)
            data = os.path.join(work, f"data-{name}")
            # BENCH_WRAP runs the service under a profiler, e.g. "perf record -g -o /tmp/perf-{name}.data --"
            # (its figures then include the profiler: for finding what dominates, not for the table).
            wrap = os.environ.get("BENCH_WRAP", "").replace("{name}", name).split()
            seconds, rss, status = measured(
                wrap + [os.path.join(args.bin, "collection-service"), "--once", "--config", config, "--data-dir", data],
                env=dict(env, STORAGE_SERVICE_URL=f"http://127.0.0.1:{port}", PORT=str(free_port())))
            lines, keys = sink_count(os.path.join(data, name))
            results.append({"scenario": f"collection-service {name}", "seconds": round(seconds, 2),
                            "records": lines, "records_per_s": round(lines / seconds), "peak_rss_mib": round(rss, 1),
                            "exit": status, "exactly_once": lines == keys == expected[name]})

            out = os.path.join(work, f"python-{name}.ndjson")
            what = ["--folder", source["path"]] if "path" in source else ["--taxii", feed_url + "collections/bench/objects/"]
            seconds, rss, status = measured([sys.executable, os.path.join(HERE, "baseline_collector.py"), *what, out])
            with open(out) as handle:
                lines = sum(1 for _ in handle)
            results.append({"scenario": f"python baseline {name}", "seconds": round(seconds, 2), "records": lines,
                            "records_per_s": round(lines / seconds), "peak_rss_mib": round(rss, 1), "exit": status,
                            "exactly_once": lines == expected[name]})
        for result in results:
            baseline = next(r for r in results if r["scenario"] == "python baseline " + result["scenario"].split()[-1])
            result["vs_python"] = round(result["records_per_s"] / max(baseline["records_per_s"], 1), 2)
    finally:
        if feed:
            feed.shutdown()
        if storage:
            storage.terminate()
            storage.wait(timeout=20)
        shutil.rmtree(work, ignore_errors=True)

    header = f"{'scenario':30} {'records':>9} {'seconds':>8} {'records/s':>10} {'vs python':>9} {'peak RSS MiB':>12} {'exactly once':>12}"
    print()
    print(header)
    print("-" * len(header))
    for r in results:
        print(f"{r['scenario']:30} {r['records']:>9} {r['seconds']:>8.2f} {r['records_per_s']:>10} "
              f"{r['vs_python']:>9.2f} {r['peak_rss_mib']:>12.1f} {str(r['exactly_once']).lower():>12}")
    path = write_report("-collector", {"objects": args.records, "unique": unique, "page_size": PAGE,
                                       "results": results})
    print(f"\n(records/s into the fsynced sink, ratios against the Python loop of this run) written to {path}")

if __name__ == "__main__":
    main()
