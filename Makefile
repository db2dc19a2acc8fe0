# Two entry points for a newcomer: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.gradscope-installed
TORCH  := 2.13.0

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch is pinned here (not in pyproject) so pip takes the CPU build instead of a multi-GB CUDA one.
	$(PY) -m pip install --quiet --disable-pip-version-check torch==$(TORCH)
	# torch==$(TORCH) again in the same resolve, so no extra (lightning, transformers...) can
	# move it to another (CUDA) build.
	$(PY) -m pip install --quiet --disable-pip-version-check torch==$(TORCH) \
		-e '.[dev,plot,integrations]'
	$(PY) .ci/check_env.py $(TORCH)
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/gradscope demo --out gradscope-demo

test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check gradscope _gradscope_pytest.py tests examples benchmarks
	$(VENV)/bin/ruff format --check gradscope _gradscope_pytest.py tests examples benchmarks
	$(VENV)/bin/mypy

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do OMP_NUM_THREADS=1 $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) gradscope-demo .pytest_cache .mypy_cache .ruff_cache
