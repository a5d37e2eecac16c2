#!/usr/bin/env python3
"""The plain-Python collector the benchmark compares with: parse each record, dedup by (id, version), append
it to one NDJSON file with an fsync every 1,000 records.

    baseline_collector.py --folder DIR OUT      every .ndjson and .json (array or bundle) file of DIR
    baseline_collector.py --taxii URL OUT       a TAXII 2.1 objects endpoint, following `next`
"""
import json
import os
import sys
import urllib.request


def records_of_folder(folder):
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name.endswith(".ndjson"):
            with open(path, "rb") as handle:
                for line in handle:
                    if line.strip():
                        yield json.loads(line)
        elif name.endswith(".json"):
            with open(path, "rb") as handle:
                document = json.load(handle)
            if isinstance(document, dict) and document.get("type") == "bundle":
                document = document.get("objects", [])
            yield from document if isinstance(document, list) else [document]


def records_of_taxii(url):
    query = "?limit=1000&match%5Bversion%5D=all"
    while True:
        request = urllib.request.Request(url + query, headers={"Accept": "application/taxii+json;version=2.1"})
        with urllib.request.urlopen(request) as answer:
            envelope = json.loads(answer.read())
        yield from envelope.get("objects", [])
        if not envelope.get("more"):
            return
        query = "?limit=1000&match%5Bversion%5D=all&next=" + envelope["next"]


def main():
    kind, where, out = sys.argv[1:4]
    records = records_of_folder(where) if kind == "--folder" else records_of_taxii(where)
    seen = set()
    pending = 0
    with open(out, "w") as sink:
        for record in records:
            key = (record["id"], record.get("modified", ""))
            if key in seen:
                continue
            seen.add(key)
            sink.write(json.dumps({"id": key[0], "version": key[1], "record": record}, separators=(",", ":")) + "\n")
            pending += 1
            if pending == 1000:
                sink.flush()
                os.fsync(sink.fileno())
                pending = 0
        sink.flush()
        os.fsync(sink.fileno())


if __name__ == "__main__":
    main()
