"""A session's transcript: one JSON line per prompt, CLI message, reminder and closing summary.

Each attempt appends to its own file (its path is on the attempt's row); `agent-manager logs`
reads it back through supervisor.display.transcript_line.
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


def _jsonable(message: object) -> Any:
    if dataclasses.is_dataclass(message):
        return dataclasses.asdict(message)  # type: ignore[arg-type]
    return repr(message)
