"""Execute the notebooks top to bottom and store them with their outputs (``make notebooks``).

Each notebook is run in a fresh kernel, in its full mode (``PYRO_VAE_FAST`` unset) or in the test
suite's fast one, from a scratch folder so that nothing it writes lands in the repository. What is
stored says nothing of the machine or the moment: no timings in the cells' metadata, each cell's
printed text as one output however the kernel flushed it, and the notebook's metadata carries only
the SHA-256 of its code cells, which the test suite compares with the cells as they are now, so a
notebook edited after it was executed fails ``make test``.

    python notebooks/execute.py                 # all of them
    python notebooks/execute.py 03_posterior_inspection.ipynb
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parent
TIMEOUT = 1800  # seconds a cell may take: the full NUTS and amortization-gap cells are the longest
METADATA = "pyro_vae"  # the notebook metadata key under which the code hash is kept


def code_hash(book: nbformat.NotebookNode) -> str:
    """The SHA-256 of the notebook's code cells, in order: what its outputs came from."""
    digest = hashlib.sha256()
    for cell in book.cells:
        if cell.cell_type == "code":
            digest.update(cell.source.encode())
            digest.update(b"\0")
    return digest.hexdigest()


def execute(path: Path, *, fast: bool) -> nbformat.NotebookNode:
    """Run the notebook at ``path`` from a clean state in a fresh kernel and return it with its
    outputs; raise ``nbclient.exceptions.CellExecutionError``, naming the cell, at the first
    cell that fails. ``fast``: the test suite's mode (``PYRO_VAE_FAST=1``, fewer epochs)."""
    book = nbformat.read(path, as_version=4)
    for cell in book.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        cell.metadata.pop("execution", None)
    env = {name: value for name, value in os.environ.items() if name != "PYRO_VAE_FAST"}
    if fast:
        env["PYRO_VAE_FAST"] = "1"
    with tempfile.TemporaryDirectory() as scratch:
        client = NotebookClient(
            book,
            timeout=TIMEOUT,
            kernel_name="python3",
            record_timing=False,
            resources={"metadata": {"path": scratch}},
        )
        client.execute(env=env)  # the kernel's environment
    for cell in book.cells:
        if cell.cell_type == "code":
            cell.outputs = coalesced(cell.outputs)
    book.metadata[METADATA] = {"code_sha256": code_hash(book)}
    return book


def coalesced(outputs: list[nbformat.NotebookNode]) -> list[nbformat.NotebookNode]:
    """``outputs`` with each run of printed text to one stream made one output: how the
    kernel's flushes cut a cell's prints differs from run to run."""
    merged: list[nbformat.NotebookNode] = []
    for output in outputs:
        previous = merged[-1] if merged else None
        if (
            previous is not None
            and output.output_type == previous.output_type == "stream"
            and output.name == previous.name
        ):
            previous.text += output.text
        else:
            merged.append(output)
    return merged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "names", nargs="*", help="notebooks to execute, by file name (all when none is given)"
    )
    args = parser.parse_args(argv)
    paths = [NOTEBOOKS / name for name in args.names] or sorted(NOTEBOOKS.glob("*.ipynb"))
    for path in paths:
        if not path.is_file():
            parser.error(f"no notebook {path.name} in {NOTEBOOKS}")
    for path in paths:
        start = time.perf_counter()
        book = execute(path, fast=False)
        nbformat.write(book, path)
        seconds = time.perf_counter() - start
        print(f"{path.name}: {seconds:.0f} s, {path.stat().st_size / 1e3:.0f} kB", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
