# Two commands set up a fresh machine: `make demo` and `make test`. Each creates the virtual
# environment first when it is missing or older than pyproject.toml.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test bench bench-throughput bench-flow lint clean-state

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch/torchvision resolve to the wheels on this machine's disk (see README).
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/unsir bootstrap
	$(BIN)/unsir forget 3 --from original

test: $(STAMP)
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/quality.py

bench-throughput: $(STAMP)
	$(BIN)/python benchmarks/throughput.py

bench-flow: $(STAMP)
	$(BIN)/python benchmarks/flow.py

lint: $(STAMP)
	$(BIN)/ruff check unsir unsir_pipeline flows tasks benchmarks tests

clean-state:
	rm -rf state models data/prepared data/retain reports/*.json reports/*.csv
