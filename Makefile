# make demo: train on the embedded digits and write runs/demo/
# make test: lint and run the whole test suite
# make notebooks: execute every notebook in full and store it with its outputs
# All three create .venv and install the package (with the dev extras) on first use.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint install clean notebooks

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

demo: install
	$(BIN)/pyro-vae train --dataset digits --epochs 200 --lr 0.003 --compile off --out runs/demo --overwrite

lint: install
	$(BIN)/ruff check pyro_vae tests examples benchmarks notebooks/execute.py

test: lint
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

notebooks: install
	$(BIN)/python notebooks/execute.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
