# Two entry points, both from a fresh clone:  make demo  |  make test
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_VERSION ?= 2.13.0
STAMP := $(VENV)/.easytune-installed
JOBS ?= 2

.PHONY: setup demo test lint cuda-build bench clean gpu-check gpu-check-dry

setup: $(STAMP)

$(STAMP): pyproject.toml setup.py constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q torch==$(TORCH_VERSION)
	$(PIP) install -q -c constraints.txt -e ".[test,bench]"
	touch $(STAMP)

demo: setup
	$(VENV)/bin/easytune quickstart

# Compile-only check of csrc/ (warnings are errors) wherever nvcc is present.
cuda-build:
	@if command -v nvcc >/dev/null 2>&1 && command -v cmake >/dev/null 2>&1; then \
		cmake -S . -B build/csrc -DEASYTUNE_WERROR=ON >/dev/null && cmake --build build/csrc -j $(JOBS); \
	else echo "nvcc or cmake not found: skipping the csrc/ compile check"; fi

# The gpu-check dry run comes first so that pytest's summary is the last line CI prints.
test: setup lint cuda-build gpu-check-dry
	TRITON_INTERPRET=1 OMP_NUM_THREADS=$(JOBS) $(VENV)/bin/pytest -q tests

# Every GPU test and benchmark in one unattended pass on a bare GPU machine (no install: runs from this
# tree with the machine's python; ~8 min). Results in $$OUT (or gpu-check-out/). See docs/bench.md.
gpu-check:
	python3 scripts/gpu_check.py --out "$${OUT:-gpu-check-out}"

# The same script on the CPU at tiny sizes: every stage runs and every output file has its fields.
gpu-check-dry: setup
	$(PY) scripts/gpu_check.py --dry-run --out build/gpu-check-dry

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: setup
	$(VENV)/bin/pytest bench/ -q --benchmark-json=bench/results/latest.json

clean:
	rm -rf build .pytest_cache
