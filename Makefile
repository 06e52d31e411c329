# Two commands for a fresh machine:  `make demo`  and  `make test`.
# Each creates .venv, installs torch first (CPU wheel by default; see TORCH_SPEC), then this project, then runs.

SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.perception-installed
# On a GPU machine: make demo TORCH_SPEC="torch==2.13.0 --index-url <your CUDA wheel index>" (any torch 2.x works).
TORCH_SPEC ?= torch==2.13.0
PIP := $(PY) -m pip -q --disable-pip-version-check

.PHONY: demo test bench lint typecheck system-deps clean-venv

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PIP) install --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
	@# torch first, so that the project's "torch>=2.1,<3" is already satisfied and pip pulls no CUDA build.
	@$(PY) -c "import torch" 2>/dev/null || { echo "installing $(TORCH_SPEC) ..."; $(PIP) install $(TORCH_SPEC) 2>&1 | grep -v "^WARNING: Location"; test $${PIPESTATUS[0]} -eq 0; }
	@echo "installing perception and its dependencies into $(VENV) ..."
	@$(PIP) install -e '.[dev]' 2>&1 | grep -v -e "^WARNING: Location" -e "BuildBackendWarning" ; test $${PIPESTATUS[0]} -eq 0
	@touch $(STAMP)

# open3d needs libusb-1.0 to import and Vulkan (llvmpipe) to render off-screen; xvfb runs the viewer window test.
SYSTEM_PACKAGES := libusb-1.0-0 libvulkan1 mesa-vulkan-drivers xvfb
system-deps:
	@if ldconfig -p | grep -q libusb-1.0.so.0 && ldconfig -p | grep -q libvulkan.so.1 && command -v xvfb-run >/dev/null; then :; \
	elif [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
		echo "installing Debian libraries for open3d ($(SYSTEM_PACKAGES)) ..."; \
		(apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(SYSTEM_PACKAGES)) >/tmp/perception-apt.log 2>&1 \
			|| { echo "apt-get failed, see /tmp/perception-apt.log"; exit 1; }; \
	else \
		echo "NOTE: open3d needs system libraries; as root run:"; \
		echo "  apt-get update && apt-get install -y $(SYSTEM_PACKAGES)"; \
		echo "  (open3d renders fall back to matplotlib pictures until then)"; \
	fi

demo: $(STAMP) system-deps
	$(PY) tools/demo.py

# NUMBA_ENABLE_CUDASIM=1: the numba CUDA kernels run in numba's simulator on machines without a GPU
# (tests/conftest.py sets it too, when torch sees no GPU, before numba is imported).
# pytest exit code 5 means "no tests collected": treat it as a failure, loudly.
test: $(STAMP) system-deps
	@set +e; $(PY) -m pytest -q $(PYTEST_ARGS) tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "ERROR: pytest collected no tests" >&2; exit 1; fi; exit $$rc

bench: $(STAMP)
	MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=1073741824 $(PY) benchmarks/bench_ops.py

lint: $(STAMP)
	$(VENV)/bin/ruff check perception ops datasets tools tests benchmarks
	$(VENV)/bin/ruff format --check perception ops datasets tools tests benchmarks

typecheck: $(STAMP)
	$(VENV)/bin/mypy perception/structures.py ops

clean-venv:
	rm -rf $(VENV)
