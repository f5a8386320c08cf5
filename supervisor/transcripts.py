"""A session's transcript: one JSON line per prompt, CLI message, reminder and closing summary.

Each attempt appends to its own file (its path is on the attempt's row); `agent-manager logs`
and the dashboard read it back with ``read_entries`` / ``last_entries`` and show each entry
through supervisor.display.transcript_line.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO


class Transcript:
    """An open transcript file; every entry is flushed, so a killed supervisor loses none."""

    def __init__(self, file: TextIO) -> None:
        self._file = file

    def write(self, kind: str, data: Any) -> None:
        self._file.write(json.dumps({"ts": time.time(), "type": kind, "data": data}, default=str) + "\n")
        self._file.flush()

    def message(self, message: object) -> None:
        """One message from the CLI, under its type's name."""
        self.write(type(message).__name__, _jsonable(message))


@contextmanager
def open_transcript(path: Path) -> Iterator[Transcript]:
    """Append to the transcript at ``path``, creating its directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as file:
        yield Transcript(file)


def read_entries(path: Path) -> Iterator[dict[str, Any] | str]:
    """The file's entries in order: a dict per JSON line, the raw line (without its newline) for
    one that is not an object (the last line of a session still being written). Raises OSError."""
    with open(path, encoding="utf-8", errors="replace") as lines:
        for line in lines:
            yield _parsed(line)


def last_entries(path: Path, tail_bytes: int = 16_384) -> list[dict[str, Any]]:
    """The complete entries in the last ``tail_bytes`` of the file, oldest first: a cheap look at
    what a running session did last. [] when the file cannot be read."""
    try:
        with open(path, "rb") as file:
            size = file.seek(0, 2)
            file.seek(max(0, size - tail_bytes))
            tail = file.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    lines = tail.splitlines()[1:] if size > tail_bytes else tail.splitlines()  # the first may be cut
    return [entry for entry in map(_parsed, lines) if isinstance(entry, dict)]


def _parsed(line: str) -> dict[str, Any] | str:
    try:
        entry = json.loads(line)
    except json.JSONDecodeError:
        return line.rstrip("\n")
    return entry if isinstance(entry, dict) else line.rstrip("\n")


def _jsonable(message: object) -> Any:
    if dataclasses.is_dataclass(message):
        return dataclasses.asdict(message)  # type: ignore[arg-type]
    return repr(message)
