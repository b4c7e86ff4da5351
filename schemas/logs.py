"""Log chunks on `zloth.logs.<run_id>`: batched lines, each with its time and stream."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar, Literal

import msgspec

from schemas.base import Event

LogStreamName = Literal["stdout", "stderr", "event", "system"]


class LogLine(msgspec.Struct, frozen=True, kw_only=True, array_like=False):
    ts: datetime
    stream: LogStreamName
    text: str


class LogChunk(Event, frozen=True, kw_only=True):
    """One batch of lines of one attempt; `seq` counts chunks within the attempt.

    `final=True` marks the end of the run's log (published once the run is terminal).
    """

    subject_prefix: ClassVar[str] = "zloth.logs"

    run_id: str
    attempt: int
    seq: int
    delivery: int = 1  # the command's delivery count: a rerun after a crash logs anew
    lines: list[LogLine] = []
    dropped: int = 0
    final: bool = False
    state: str | None = None  # with final: the run's terminal state

    def subject(self) -> str:
        return f"{self.subject_prefix}.{self.run_id}"

    def msg_id(self) -> str:
        if self.final:
            return f"run:{self.run_id}:logs:end"
        return f"run:{self.run_id}:attempt:{self.attempt}:d{self.delivery}:log:{self.seq}"
