"""A deterministic demo coding agent (stdlib only): prints JSON-lines events, edits files
in its cwd by style, writes a summary. Test hooks in the instruction: FAIL, HANG,
SLEEP=<s>, FORKBOMB-ORPHAN. Run: python -m services.executor_runner.demo_agent."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import time
from pathlib import Path

__all__ = ["main"]


def _emit(event: dict[str, object]) -> None:
    print(json.dumps(event), flush=True)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "task"


def _spawn_orphan() -> int:
    """Double fork: the grandchild setsid()s away from our group, closes our pipes and
    sleeps, as a daemonizing tool would. Returns the grandchild's pid."""
    read_fd, write_fd = os.pipe()
    if os.fork() == 0:  # intermediate child
        os.close(read_fd)
        if os.fork() == 0:  # grandchild
            os.setsid()
            os.write(write_fd, str(os.getpid()).encode())  # only now it has escaped
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2, write_fd):
                os.dup2(null, fd)
            time.sleep(600)
        os._exit(0)
    os.close(write_fd)
    pid = int(os.read(read_fd, 32))
    os.close(read_fd)
    os.wait()  # reap the intermediate child; the grandchild goes to init (or a subreaper)
    return pid


def _edit(style: str, instruction: str, cwd: Path) -> str:
    """Make this style's deterministic change; returns the path it wrote."""
    if style == "a":
        with (cwd / "NOTES.md").open("a", encoding="utf-8") as notes:
            notes.write(f"- {instruction}\n")
        return "NOTES.md"
    if style == "b":
        path = Path("docs") / f"{_slug(instruction)}.md"
        (cwd / "docs").mkdir(exist_ok=True)
        (cwd / path).write_text(f"# {instruction}\n\nWritten by demo agent b.\n", encoding="utf-8")
        return str(path)
    readme = cwd / "README.md"
    if readme.exists():
        with readme.open("a", encoding="utf-8") as f:
            f.write(f"\n## {instruction}\n\nDone by demo agent c.\n")
        return "README.md"
    line = f"print('hello from demo agent c:', {json.dumps(instruction)})\n"
    (cwd / "hello.py").write_text(line, encoding="utf-8")
    return "hello.py"


def _special(instruction: str, pause: float) -> None:
    """The test hooks: failure, hang, slow run, escaping grandchild."""
    if "FAIL" in instruction:
        print("demo agent failed on purpose", file=sys.stderr, flush=True)
        sys.exit(3)
    if "HANG" in instruction:
        while True:
            time.sleep(3600)
    if "FORKBOMB-ORPHAN" in instruction:
        _emit({"type": "message", "text": "spawned an orphan", "pid": _spawn_orphan()})
        time.sleep(pause)
    if match := re.search(r"SLEEP=([0-9.]+)", instruction):
        end = time.monotonic() + float(match.group(1))
        while (left := end - time.monotonic()) > 0:
            _emit({"type": "message", "text": f"working… {left:.1f}s left"})
            time.sleep(min(0.5, left))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="demo_agent", description=__doc__)
    parser.add_argument("--style", choices=["a", "b", "c"], default="a")
    parser.add_argument("--summary-file", type=Path)
    parser.add_argument("--sleep", type=float, default=0.3, help="pause per step (seconds)")
    parser.add_argument("--resume", help="session id to continue")
    parser.add_argument("instruction", nargs="+")
    args = parser.parse_args(argv)
    instruction = " ".join(args.instruction)
    digest = hashlib.sha256(instruction.encode()).hexdigest()[:8]
    session = args.resume or f"demo-{args.style}-{digest}"
    cwd = Path.cwd()

    verb = f"resuming {args.resume}" if args.resume else "starting"
    _emit({"type": "message", "text": f"demo-{args.style} {verb}: {instruction}"})
    _special(instruction, args.sleep)
    time.sleep(args.sleep)
    _emit({"type": "tool_use", "tool": "list_files", "path": "."})
    time.sleep(args.sleep)
    path = _edit(args.style, instruction, cwd)
    _emit({"type": "tool_use", "tool": "write_file", "path": path})
    time.sleep(args.sleep)
    summary = f"demo-{args.style} wrote {path} for: {instruction}"
    if args.summary_file is not None:
        args.summary_file.write_text(summary + "\n", encoding="utf-8")
    _emit({"type": "message", "text": "done"})
    usage = {"input_tokens": 100 + 10 * len(instruction.split()), "output_tokens": 150}
    _emit({"type": "result", "summary": summary, "session_id": session, "usage": usage})
    return 0


if __name__ == "__main__":
    sys.exit(main())
