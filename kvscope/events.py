"""What the engine decides, as plain records, sent to one EventSink.

This is the seam the scope (and a JSONL recorder) will hang on. With the default
NullSink an emit is one method call that does nothing; callers that would build an
expensive event check `sink.enabled` first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Event:
    kind: str
    step: int
    data: dict[str, Any] = field(default_factory=dict)


class EventSink:
    enabled = True

    def emit(self, event: Event) -> None:
        raise NotImplementedError


class NullSink(EventSink):
    enabled = False

    def emit(self, event: Event) -> None:
        return None


class ListSink(EventSink):
    """Keeps every event in memory (tests, short recordings)."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def emit(self, event: Event) -> None:
        self.events.append(event)

    def of_kind(self, kind: str) -> list[Event]:
        return [event for event in self.events if event.kind == kind]
