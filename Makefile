# make demo: train on the embedded digits and write runs/demo/
# make docs: build the documentation site into docs/_build/html (warnings are errors)
# make test: lint, build the docs, and run the whole test suite
# make notebooks: execute every notebook in full and store it with its outputs
# Each creates .venv and installs the package (with the dev extras) on first use.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint docs install clean notebooks

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

demo: install
	$(BIN)/pyro-vae train --dataset digits --epochs 200 --lr 0.003 --compile off --out runs/demo --overwrite

lint: install
	$(BIN)/ruff check pyro_vae tests examples benchmarks docs notebooks/execute.py

# -E: a fresh environment every time, since a kept one would not repeat the warnings of pages
# it does not read again
docs: install
	$(BIN)/sphinx-build -b html -E -W --keep-going -q docs docs/_build/html

test: lint docs
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

notebooks: install
	$(BIN)/python notebooks/execute.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache docs/_build docs/guide docs/notebooks
