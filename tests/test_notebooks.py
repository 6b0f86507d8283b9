"""The notebooks: committed with the outputs of a full run of their current cells (``make
notebooks``), and still running top to bottom in their fast mode (PYRO_VAE_FAST=1: fewer epochs)."""

import importlib.util
import re
from itertools import pairwise
from pathlib import Path

import nbformat
import pytest

HERE = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(HERE.glob("*.ipynb"))
_spec = importlib.util.spec_from_file_location("execute_notebooks", HERE / "execute.py")
execute_notebooks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(execute_notebooks)

MAX_BYTES = 1_500_000  # a notebook with figures at 100 dpi; a larger one is badly stored
# what changes from machine to machine or run to run: paths, tqdm's rates and clocks
MACHINE = re.compile(r"/(tmp|home|work|root|Users)/|site-packages|it/s\b|s/it\b|\d\d:\d\d<")
STALE = "{} was edited after it was executed, or never executed: run `make notebooks`"


def texts(cell: nbformat.NotebookNode) -> list[str]:
    """Every text a code cell's outputs show: streams, results' plain text and HTML, errors."""
    found = []
    for output in cell.outputs:
        found.append(output.get("text", ""))
        data = output.get("data", {})
        found += [data.get("text/plain", ""), data.get("text/html", "")]
        found += output.get("traceback", [])
    return [text if isinstance(text, str) else "".join(text) for text in found]


def test_there_are_six_notebooks():
    assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05", "06"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_notebook_holds_the_outputs_of_its_current_cells(path):
    book = nbformat.read(path, as_version=4)
    stored = book.metadata.get(execute_notebooks.METADATA, {}).get("code_sha256")
    assert stored == execute_notebooks.code_hash(book), STALE.format(path.name)
    code = [cell for cell in book.cells if cell.cell_type == "code"]
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1))
    for n, cell in enumerate(code, 1):
        kinds = [(o.output_type, o.get("name")) for o in cell.outputs]
        assert ("error", None) not in kinds and ("stream", "stderr") not in kinds, (
            f"{path.name}, cell [{n}]: error output\n" + "\n".join(texts(cell))
        )
        streams = [o.name if o.output_type == "stream" else None for o in cell.outputs]
        assert all(a is None or a != b for a, b in pairwise(streams)), "print split"
        shown = "\n".join(texts(cell))
        assert not MACHINE.search(shown), f"{path.name}, cell [{n}] shows {MACHINE.search(shown)}"
    assert sum(bool(cell.outputs) for cell in code) >= len(code) // 2  # mostly things to see
    assert path.stat().st_size < MAX_BYTES


def test_a_figure_is_stored_as_a_png():
    book = nbformat.read(HERE / "01_quickstart.ipynb", as_version=4)
    outputs = [output for cell in book.cells for output in cell.get("outputs", [])]
    pictures = [output for output in outputs if "image/png" in output.get("data", {})]
    assert len(pictures) >= 5  # curves, data, reconstructions, samples, typical, walk


def test_the_code_hash_changes_with_any_code_cell_but_not_with_outputs_or_prose():
    book = nbformat.read(HERE / "04_reparameterization_and_manual_elbo.ipynb", as_version=4)
    before = execute_notebooks.code_hash(book)
    for cell in book.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        else:
            cell.source += "\nmore prose"
    assert execute_notebooks.code_hash(book) == before
    code = [cell for cell in book.cells if cell.cell_type == "code"]
    code[-1].source = code[-1].source.replace("1000", "100")
    assert execute_notebooks.code_hash(book) != before


def test_a_cells_prints_are_stored_as_one_output_per_stream():
    def stream(name, text):
        return nbformat.v4.new_output("stream", name=name, text=text)

    picture = nbformat.v4.new_output("display_data", data={"text/plain": "<Figure>"})
    outputs = [stream("stdout", "k = 1\n"), stream("stdout", "k = 10\n"), stream("stderr", "!\n")]
    outputs += [picture, stream("stdout", "done\n")]
    merged = execute_notebooks.coalesced(outputs)
    assert [(o.output_type, o.get("name"), o.get("text")) for o in merged] == [
        ("stream", "stdout", "k = 1\nk = 10\n"),
        ("stream", "stderr", "!\n"),
        ("display_data", None, None),
        ("stream", "stdout", "done\n"),
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes_in_fast_mode(path):
    # execute() raises CellExecutionError, naming the cell, at the first cell that fails
    book = execute_notebooks.execute(path, fast=True)
    code = [cell for cell in book.cells if cell.cell_type == "code"]
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1))  # all ran
