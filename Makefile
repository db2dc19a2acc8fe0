# Entry points for a newcomer: `make demo`, `make test`, `make docs`. Each creates .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.gradscope-installed
TORCH  := 2.13.0

.PHONY: install demo test lint docs bench mutate clean

$(STAMP): pyproject.toml
	@echo "==> [1/4] $(VENV): a virtual environment for gradscope (first run only)"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "==> [2/4] torch $(TORCH), CPU build (about 200 MB on a first download; pip's output follows)"
	# torch is pinned here (not in pyproject) so pip takes the CPU build instead of a multi-GB CUDA one.
	$(PY) -m pip install --disable-pip-version-check torch==$(TORCH)
	@echo "==> [3/4] gradscope with its dev, plot, integrations and docs extras (Lightning, transformers, TensorBoard, Sphinx...)"
	# torch==$(TORCH) again in the same resolve, so no extra (lightning, transformers...) can
	# move it to another (CUDA) build.
	$(PY) -m pip install --disable-pip-version-check torch==$(TORCH) \
		-e '.[dev,plot,integrations,docs]'
	@echo "==> [4/4] checking that torch is still $(TORCH) (CPU) and torchvision is absent"
	$(PY) .ci/check_env.py $(TORCH)
	touch $(STAMP)
	@echo "==> installed into $(VENV)"

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/gradscope demo --out gradscope-demo

test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check gradscope _gradscope_pytest.py conftest.py tests tools examples benchmarks docs
	$(VENV)/bin/ruff format --check gradscope _gradscope_pytest.py conftest.py tests tools examples benchmarks docs
	$(VENV)/bin/mypy

# The documentation site: warnings are errors (broken references, public names without a
# docstring, failing gallery examples), then every page is opened in headless Chromium.
docs: $(STAMP)
	@echo "==> building the documentation (runs the gallery's examples) into docs/_build/html"
	rm -rf docs/_build/html docs/generated    # every build runs the gallery and reads every page
	OMP_NUM_THREADS=1 $(PY) -m sphinx -W --keep-going -q -b html docs docs/_build/html
	@echo "==> opening every page in headless Chromium"
	$(PY) docs/check_site.py docs/_build/html
	@echo "==> open docs/_build/html/index.html"

# Mutation testing of the core (tools/mutate.py; slow, not in CI): MODULES=path.py for one.
mutate: $(STAMP)
	$(PY) tools/mutate.py $(MODULES)

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do OMP_NUM_THREADS=1 $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) gradscope-demo .pytest_cache .mypy_cache .ruff_cache mutants docs/_build docs/generated
