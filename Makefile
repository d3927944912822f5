# Set-up and entry points. `make run` and `make test` each build .venv on first use; `make test`
# also builds .venv312 (Python 3.12, Colab's), the kernel tests/test_notebook.py executes
# notebooks/quickstart.ipynb with.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Python 3.12: pyenv's 3.12.x when pyenv has one, else python3.12 on PATH.
PYTHON312 ?= $(or $(lastword $(wildcard $(shell pyenv root 2>/dev/null)/versions/3.12*/bin/python3)),$(shell command -v python3.12 2>/dev/null),python3.12)
VENV312 ?= .venv312
BIN312 := $(VENV312)/bin
# The Jupyter kernel installed into .venv312 (its share/jupyter/kernels), run by the notebook test.
NOTEBOOK_KERNEL := robust_losses_jax_py312
FASHION_MNIST_DEB := /usr/share/datasets/fashion-mnist
RUN_FLAGS ?= --loss=power --gamma=2

.PHONY: run test lint bench bench-data data venv venv312 clean

venv: $(BIN)/.installed

$(BIN)/.installed: setup.py requirements.txt requirements-test.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install -r requirements.txt -r requirements-test.txt
	$(BIN)/python -m pip install --no-deps --no-build-isolation -e . || \
	  $(BIN)/python -m pip install --no-deps -e .
	touch $@

# Python 3.12 venv for the notebook test: requirements.txt (its markers pick the jax 0.12 line),
# requirements-notebook.txt (nbclient, ipykernel) and a kernel spec named $(NOTEBOOK_KERNEL).
venv312: $(BIN312)/.installed

$(BIN312)/.installed: setup.py requirements.txt requirements-notebook.txt
	@$(PYTHON312) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null || \
	  { echo "venv312: no Python 3.12 at '$(PYTHON312)'; pass PYTHON312=/path/to/python3.12" >&2; exit 1; }
	$(PYTHON312) -m venv $(VENV312)
	$(BIN312)/python -m pip install --quiet --upgrade pip
	$(BIN312)/python -m pip install -r requirements.txt -r requirements-notebook.txt
	$(BIN312)/python -m pip install --no-deps --no-build-isolation -e . || \
	  $(BIN312)/python -m pip install --no-deps -e .
	$(BIN312)/python -m ipykernel install --sys-prefix --name $(NOTEBOOK_KERNEL) \
	  --display-name "Python 3.12 (robust_losses_jax)"
	touch $@

# Fashion-MNIST for offline use: Debian's dataset-fashion-mnist (the original IDX files).
data:
	@if [ ! -f $(FASHION_MNIST_DEB)/train-images-idx3-ubyte.gz ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update && apt-get install -y dataset-fashion-mnist; \
	  else sudo apt-get update && sudo apt-get install -y dataset-fashion-mnist; fi; \
	fi

run: venv data
	$(BIN)/python -m experiments.run $(RUN_FLAGS)

test: venv venv312 data
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n 2 tests

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: venv
	$(BIN)/python -m benchmarks.loss_overhead --quick
	$(BIN)/python -m benchmarks.bench_train --quick
	$(BIN)/python -m benchmarks.bench_kfold --quick

# The first 11,000 Fashion-MNIST training examples as one .npz (images, labels), and the whole
# dataset as an npz:PATH dataset (fmnist60k.npz), for machines without tfds or the Debian files
# (the lent GPU machine): `benchmarks/gpu_suite.sh` reads them.
bench-data: venv data
	$(BIN)/python -c "from robust_losses_jax import input_pipeline as ip; import numpy as np, os; \
	  s = ip.load_split('fashion_mnist', 'train', num_examples=11000); os.makedirs('.bench_data', exist_ok=True); \
	  np.savez('.bench_data/fmnist.npz', images=s.images, labels=s.labels)"
	$(BIN)/python -c "from robust_losses_jax import input_pipeline as ip; import numpy as np; \
	  tr, te = ip.load_split('fashion_mnist', 'train'), ip.load_split('fashion_mnist', 'test'); \
	  np.savez_compressed('.bench_data/fmnist60k.npz', train_images=tr.images, train_labels=tr.labels, \
	  test_images=te.images, test_labels=te.labels, class_names=np.array(tr.class_names))"

clean:
	rm -rf $(VENV) $(VENV312) *.egg-info
