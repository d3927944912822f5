# Set-up and entry points. `make run` and `make test` each build .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
FASHION_MNIST_DEB := /usr/share/datasets/fashion-mnist
RUN_FLAGS ?= --loss=power --gamma=2

.PHONY: run test lint bench bench-data data venv clean

venv: $(BIN)/.installed

$(BIN)/.installed: setup.py requirements.txt requirements-test.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install -r requirements.txt -r requirements-test.txt
	$(BIN)/python -m pip install --no-deps --no-build-isolation -e . || \
	  $(BIN)/python -m pip install --no-deps -e .
	touch $@

# Fashion-MNIST for offline use: Debian's dataset-fashion-mnist (the original IDX files).
data:
	@if [ ! -f $(FASHION_MNIST_DEB)/train-images-idx3-ubyte.gz ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update && apt-get install -y dataset-fashion-mnist; \
	  else sudo apt-get update && sudo apt-get install -y dataset-fashion-mnist; fi; \
	fi

run: venv data
	$(BIN)/python -m experiments.run $(RUN_FLAGS)

test: venv data
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n 2 tests

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: venv
	$(BIN)/python -m benchmarks.loss_overhead --quick
	$(BIN)/python -m benchmarks.bench_train --quick
	$(BIN)/python -m benchmarks.bench_kfold --quick

# The first 11,000 Fashion-MNIST training examples as one .npz (images, labels), for machines
# without tfds or the Debian files (the lent GPU machine): `benchmarks/gpu_suite.sh` reads it.
bench-data: venv data
	$(BIN)/python -c "from robust_losses_jax import input_pipeline as ip; import numpy as np, os; \
	  s = ip.load_split('fashion_mnist', 'train', num_examples=11000); os.makedirs('.bench_data', exist_ok=True); \
	  np.savez('.bench_data/fmnist.npz', images=s.images, labels=s.labels)"

clean:
	rm -rf $(VENV) *.egg-info
