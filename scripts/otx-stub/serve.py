#!/usr/bin/env python3
"""A stand-in for AlienVault OTX's subscribed-pulses API, for the collection-service integration tests.

    serve.py PORT API_KEY

GET  /api/v1/pulses/subscribed?modified_since=<naive UTC>&limit=N&page=P
     pulses whose `modified` is at or after `modified_since` (inclusive, as OTX), newest first, with
     `next` (a full URL) while more remain; 403 without the right X-OTX-API-KEY.
POST /test/pulses    body: a JSON array of pulses ({"id", "modified", ...}); the tests' producer.
     A pulse with an id already present replaces it (OTX keeps one version of a pulse).

Only the standard library; stops on SIGTERM/SIGINT.
"""
import json
import sys
import threading
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlparse

PORT = int(sys.argv[1])
API_KEY = sys.argv[2]
PULSES = {}
LOCK = threading.Lock()


def instant(text):
    text = text.strip().replace(" ", "T")
    if text.endswith("Z"):
        text = text[:-1]
    if "+" in text[19:]:
        text = text[: 19 + text[19:].index("+")]
    return datetime.fromisoformat(text)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        if self.path != "/test/pulses":
            return self.answer(404, {"detail": "Not found."})
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        with LOCK:
            for pulse in body:
                PULSES[pulse["id"]] = pulse
        self.answer(201, {"count": len(body)})

    def do_GET(self):
        url = urlparse(self.path)
        if url.path != "/api/v1/pulses/subscribed":
            return self.answer(404, {"detail": "Not found."})
        if self.headers.get("X-OTX-API-KEY") != API_KEY:
            return self.answer(403, {"detail": "Authentication credentials were not provided."})
        query = {key: values[0] for key, values in parse_qs(url.query).items()}
        since = instant(query["modified_since"]) if "modified_since" in query else datetime.min
        limit = int(query.get("limit", "10"))
        page = int(query.get("page", "1"))
        with LOCK:
            matching = [p for p in PULSES.values() if instant(p["modified"]) >= since]
        matching.sort(key=lambda p: instant(p["modified"]), reverse=True)
        results = matching[(page - 1) * limit : page * limit]
        more = page * limit < len(matching)
        next_url = None
        if more:
            query["page"] = str(page + 1)
            next_url = f"http://127.0.0.1:{PORT}{url.path}?{urlencode(query)}"
        self.answer(200, {"results": results, "count": len(matching), "next": next_url})


server = ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
print(f"otx stub listening on 127.0.0.1:{PORT}", flush=True)
try:
    server.serve_forever()
except KeyboardInterrupt:
    pass
