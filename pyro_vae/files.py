"""Files written whole or not at all: a crash mid-write leaves the previous file intact."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import IO, Any


def atomic_write(
    path: str | Path, write: Callable[[IO[bytes]], Any], previous: str | Path | None = None
) -> None:
    """Call ``write`` on a temporary file beside ``path``, then rename it to ``path``.

    :param path: the file to write.
    :param write: writes the whole contents to the open file it is given.
    :param previous: where the file already at ``path``, if any, is renamed to once the new one is
        complete and before it takes its place: a complete file is on disk at every moment.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if previous is not None:
            with suppress(FileNotFoundError):  # the first one written has none to keep
                os.replace(path, previous)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: str | Path, obj: Any) -> None:
    """``obj`` as indented JSON, written atomically.

    :param path: the file to write.
    :param obj: plain JSON data: dicts, lists, strings, numbers.
    """
    atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


def drop_from_page_cache(path: str | Path) -> None:
    """Write ``path``'s dirty pages to disk and ask the kernel to drop its pages from the page
    cache (``posix_fadvise(DONTNEED)``; pages a process has mapped stay): its next read comes from
    the disk, as on a machine that has not read it yet. For cold-cache measurements and tests.

    :param path: the file.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
