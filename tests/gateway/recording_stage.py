"""A response stage for tests: an observer that logs what it sees."""

from __future__ import annotations


class Recorder:
    """An observer: logs what it sees into a shared list of events."""

    observe_only = True

    def __init__(self, name: str, events: list) -> None:
        self.name = name
        self.events = events

    def on_headers(self, request, status, headers) -> None:
        self.events.append((self.name, "headers", status))

    def on_chunk(self, request, chunk, end_of_stream) -> bytes:
        self.events.append((self.name, "chunk", chunk, end_of_stream))
        return chunk

    def on_finish(self, request) -> None:
        self.events.append((self.name, "finish"))
