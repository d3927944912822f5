# Set-up and entry points, for a user without root as well. `make run` and `make test` each build
# .venv (Python 3.11-3.13: $(PYTHON)) on first use; `make test` also builds .venv-colab (what
# Colab has: Python 3.12 with TensorFlow and jax preinstalled, not this project), in which
# tests/test_notebook.py runs the notebook, whose install cell installs this project.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Another Python from pyenv, when pyenv has one, else on PATH.
pyenv_python = $(or $(lastword $(wildcard $(shell pyenv root 2>/dev/null)/versions/$(1)*/bin/python3)),$(shell command -v python$(1) 2>/dev/null),python$(1))
PYTHON312 ?= $(call pyenv_python,3.12)
# tests/test_install.py installs the package into a fresh venv of this Python, outside the checkout.
PYTHON313 ?= $(call pyenv_python,3.13)
VENV_COLAB ?= .venv-colab
BIN_COLAB := $(VENV_COLAB)/bin
# The Jupyter kernel installed into .venv-colab (its share/jupyter/kernels), run by the notebook test.
NOTEBOOK_KERNEL := robust_losses_jax_colab
FASHION_MNIST_DEB := /usr/share/datasets/fashion-mnist
RUN_FLAGS ?= --loss=power --gamma=2
# The fast subset: every module imported, every loss and detector on tiny data (about 3 minutes).
FAST_TESTS := -m "not slow"

.PHONY: run test test-fast lint bench bench-data data venv venv-colab clean

venv: $(BIN)/.installed

$(BIN)/.installed: setup.py requirements.txt requirements-test.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install -r requirements.txt -r requirements-test.txt
	$(BIN)/python -m pip install --no-deps --no-build-isolation -e . || \
	  $(BIN)/python -m pip install --no-deps -e .
	touch $@

# Colab's runtime as tests/test_notebook.py needs it: Python 3.12 with requirements-colab.txt
# (TensorFlow, jax and the other packages Colab preinstalls, and the notebook runner), a kernel
# spec named $(NOTEBOOK_KERNEL), and not this project: the notebook's install cell installs it.
venv-colab: $(BIN_COLAB)/.installed

$(BIN_COLAB)/.installed: requirements-colab.txt
	@$(PYTHON312) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null || \
	  { echo "venv-colab: no Python 3.12 at '$(PYTHON312)'; pass PYTHON312=/path/to/python3.12" >&2; exit 1; }
	$(PYTHON312) -m venv $(VENV_COLAB)
	$(BIN_COLAB)/python -m pip install --quiet --upgrade pip
	$(BIN_COLAB)/python -m pip install -r requirements-colab.txt
	$(BIN_COLAB)/python -m ipykernel install --sys-prefix --name $(NOTEBOOK_KERNEL) \
	  --display-name "Python 3.12 (Colab-like)"
	touch $@

# Fashion-MNIST for offline use: Debian's dataset-fashion-mnist (the original IDX files). Without
# root (and no password-free sudo) or without apt, it says so in one line and goes on: tfds then
# downloads Fashion-MNIST on first use, where there is internet.
data:
	@if [ -f $(FASHION_MNIST_DEB)/train-images-idx3-ubyte.gz ]; then :; \
	elif ! command -v apt-get >/dev/null; then \
	  echo "data: no apt-get here; tfds will download Fashion-MNIST on first use (needs internet)"; \
	elif [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	elif sudo -n true 2>/dev/null; then \
	  sudo -n apt-get update -qq && sudo -n apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	else \
	  echo "data: no root to install Debian's dataset-fashion-mnist; tfds will download Fashion-MNIST on first use (needs internet)"; \
	fi

run: venv data
	$(BIN)/python -m experiments.run $(RUN_FLAGS)

test: venv venv-colab data
	$(BIN)/ruff check .
	PYTHON313=$(PYTHON313) $(BIN)/python -m pytest -n 2 tests

# The developers' inner loop: no end-to-end trainings, no venvs built.
test-fast: venv data
	$(BIN)/python -m pytest -n 2 $(FAST_TESTS) tests

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
	rm -rf $(VENV) $(VENV_COLAB) *.egg-info
