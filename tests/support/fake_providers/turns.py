"""The scripted conversation every fake provider follows, decided from the request alone
(so retries, resumed sessions and parallel agents all get the right turn): while the
latest message is the user's, ask for one file edit; once it is a tool result, finish."""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field


@dataclass
class Script:
    """`edit_path` is relative to the agent's working directory; the content of each edit
    carries a counter so a follow-up run changes the file again."""

    edit_path: str = "FAKE_EDIT.md"
    final_text: str = "Edited FAKE_EDIT.md as asked."
    reply: str | None = None  # answer every request with this text (no tool call)
    _counter: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def finishes(self, last_is_tool_result: bool) -> bool:
        return last_is_tool_result or self.reply is not None

    def text(self) -> str:
        return self.final_text if self.reply is None else self.reply

    def edit_content(self) -> str:
        with self._lock:
            n = next(self._counter)
        return f"# Edited by the fake provider\n\nedit number {n}\n"
