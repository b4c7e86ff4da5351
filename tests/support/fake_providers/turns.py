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
    _counter: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def edit_content(self) -> str:
        with self._lock:
            n = next(self._counter)
        return f"# Edited by the fake provider\n\nedit number {n}\n"
