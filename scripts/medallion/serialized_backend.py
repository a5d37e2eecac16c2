"""medallion's in-memory backend with its calls taken one at a time.

medallion serves requests on threads, and its MemoryBackend shares the collection's lists between them without
a lock: every GET of objects sorts the collection's manifest in place (`manifest.sort(...)` in
`BasicFilter.sort_and_paginate`), and CPython empties a list while it sorts it and drops whatever another thread
appended meanwhile (a thread sorting a list of 200 while another appended 200,000 dicts to it kept 82,466 of them).
A POST that lands in that moment is answered "complete" yet its versions vanish from the manifest and from every
later GET of objects: a CI run of the exactly-once attack lost one POST's four versions so. Backend calls from
threads also raised KeyError inside the filters. The collectors under test must
meet a server that keeps what it acknowledged, so every backend call here holds one lock; requests still arrive
on medallion's threads and connections as before.
"""

import functools
import threading

from medallion.backends.memory_backend import MemoryBackend


class FirstComeLock:
    """A lock granted in the order it was asked for: threading.Lock lets a thread that releases it take it
    again at once, and a reader polling in a loop then starves a POST for minutes (seen in a stress)."""

    def __init__(self):
        self._condition = threading.Condition()
        self._next_ticket = 0
        self._serving = 0

    def __enter__(self):
        with self._condition:
            ticket = self._next_ticket
            self._next_ticket += 1
            self._condition.wait_for(lambda: self._serving == ticket)

    def __exit__(self, *exc):
        with self._condition:
            self._serving += 1
            self._condition.notify_all()


# What medallion's views call, and the session sweeper's thread; the helpers these call (set_next, get_next,
# _update_manifest) run under the caller's turn.
SERIALIZED = (
    "server_discovery", "get_collections", "get_collection", "get_object_manifest", "get_api_root_information",
    "get_status", "get_objects", "add_objects", "get_object", "delete_object", "get_object_versions",
    "save_data_to_file", "_pop_expired_sessions",
)


class SerializedMemoryBackend(MemoryBackend):
    """MemoryBackend whose entry points run one at a time, in the order they were called."""

    def __init__(self, **kwargs):
        self._turn = FirstComeLock()
        super().__init__(**kwargs)


def _serialized(method):
    @functools.wraps(method)
    def call(self, *args, **kwargs):
        with self._turn:
            return method(self, *args, **kwargs)

    return call


for _name in SERIALIZED:
    setattr(SerializedMemoryBackend, _name, _serialized(getattr(MemoryBackend, _name)))
