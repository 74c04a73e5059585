# envconv developer tasks. `make test` and `make demo` create .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv kernel data test test-fast docs demo sigma-demo bench bench-gpu clean

venv: $(STAMP)

$(STAMP): pyproject.toml requirements-dev.txt
	@echo "make: setting up $(VENV) (measured 2026-12-07 on 2 cores, pip's cache warm: 84 s of packages, then 37 s for the C++ kernel)"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@echo "make: installing PyTorch and the development tools of requirements-dev.txt ..."
	$(PY) -m pip install --quiet -r requirements-dev.txt
	@echo "make: installing envconv and compiling its C++ kernel ..."
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Says which C++ CPU kernel envconv uses (built by `make venv` with the package) and builds one if it must.
kernel: $(STAMP)
	$(PY) -m envconv.ops

# What CI runs: ruff, then every test (-m "": the slow ones too, which a plain `pytest` leaves out), one worker per core.
test: $(STAMP)
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m pytest -q -m "" -n auto; rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest: no tests were collected"; exit 0; fi; exit $$rc

# The edit-test loop: ruff, then the tests not marked slow (pyproject's default).
test-fast: $(STAMP)
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest: no tests were collected"; exit 0; fi; exit $$rc

# The documentation site (Sphinx + MyST) into build/docs; a warning or a broken reference fails the build.
docs: $(STAMP)
	$(PY) -m sphinx -E -W --keep-going -n -q -b html docs build/docs
	@echo "open build/docs/index.html"

# Fashion-MNIST from Debian's dataset-fashion-mnist (apt-get) unless it is there already.
data:
	scripts/get_fashion_mnist.sh

# The main job: a small ResNet with and without envelopes on Fashion-MNIST (it says first how long it should take).
demo: $(STAMP) data
	$(PY) -m envconv demo

# Seconds: a DisentangledConv2d learns known sigmas back from a teacher layer.
sigma-demo: $(STAMP)
	$(PY) -m envconv sigma-demo

bench: $(STAMP)
	$(PY) -m benchmarks.run_all

# On a machine with a CUDA GPU: Table 1f analogue and the per-implementation layer table (under 8 minutes).
bench-gpu: $(STAMP)
	$(PY) -m benchmarks.gpu

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache docs/_generated src/envconv/_C.so src/envconv/_C.json
