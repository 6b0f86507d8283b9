"""The files the commands write: checked before the work is done, and written with a failure as
one line."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.backend_bases import FigureCanvasBase

from pyro_vae.errors import ConfigError, PyroVAEError


def output_path(
    out: str | None, default: Path, endings: Sequence[str], what: str, flag: str = "--out"
) -> Path:
    """The file to write: ``out`` (given as ``flag``) or ``default``, checked before the work is
    done: not a folder, with one of ``endings`` (``what`` such a file is), in a folder that
    exists."""
    path = Path(out) if out else default
    if path.is_dir():
        raise ConfigError(f"{flag} {path} is a folder; name a file such as {path / default.name}")
    if path.suffix[1:].lower() not in endings:
        one = f"the ending .{endings[0]}" if len(endings) == 1 else None
        needs = one or f"one of the endings {', '.join(endings)}"
        raise ConfigError(f"{flag} {path}: {what} needs {needs}")
    if not path.parent.is_dir():
        raise ConfigError(f"{flag} {path}: the folder {path.parent} does not exist")
    return path


def picture_path(out: str | None, default: Path, flag: str = "--out") -> Path:
    """The picture file to write: ``out`` or ``default``, checked before the work is done."""
    formats = sorted(FigureCanvasBase.get_supported_filetypes())
    return output_path(out, default, formats, "a picture file", flag)


def write_output(write: Any, *args: Any, path: Path) -> None:
    """``write(*args, path)``, with a failed write (permissions, a full disk) as one line."""
    try:
        write(*args, path)
    except OSError as e:
        raise PyroVAEError(f"cannot write {path} ({e.strerror or e})") from None
