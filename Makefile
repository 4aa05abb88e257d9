# The two commands of the README:
#   make run    set up (venv, pinned CPU torch, the project) and run the pipeline: dvc repro
#   make test   set up and run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
UV_VERSION := $(shell sed -n 's/^uv==\([^ #]*\).*/\1/p' constraints.txt)
ACTIVATE := . $(VENV)/bin/activate

.PHONY: setup run test test-fast lint
setup: $(VENV)/.installed

# torch==2.13.0's CPU build is a file on this machine's disk, in the folder pip's configuration
# names (find-links). uv installs it from there together with the ~200 other pinned packages, in
# one resolution (~40 s; pip alone takes 2-4 min). Where no folder holds that file, pip installs
# torch first (uv does not read pip's configuration, and a torch resolved from PyPI alone is a CUDA
# build of several GB), then uv the rest. Bytecode compiled at install: where
# PYTHONDONTWRITEBYTECODE is set, as on our machines, a process would otherwise compile what it
# imports every time (torch: +2 s).
LOCAL_WHEELS ?= $(firstword $(shell python3 -m pip config get global.find-links 2>/dev/null))
UV_INSTALL = $(VENV)/bin/uv pip install -q --compile-bytecode --python $(PY) -c constraints.txt

$(VENV)/.installed: pyproject.toml constraints.txt
	@# the UI test's browser (Debian's chromium); best effort: without it that one test is skipped
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  apt-get install -y -q chromium >/dev/null 2>&1; } || echo "note: no chromium; tests/e2e/test_ui.py will be skipped"
	python3 -m venv $(VENV)
	$(PY) -m pip install -q uv==$(UV_VERSION)
	if ls $(LOCAL_WHEELS)/torch-2.13.0+cpu-*.whl >/dev/null 2>&1; then \
	  $(UV_INSTALL) --find-links $(LOCAL_WHEELS) torch==2.13.0+cpu -e '.[test]'; \
	else \
	  $(PY) -m pip install -q torch==2.13.0 && $(UV_INSTALL) -e '.[test]'; \
	fi
	touch $@

run: setup
	$(ACTIVATE) && dvc repro

# two workers (the suite is CPU-bound: a third is slower), one test file each at a time (module
# fixtures are built once); the suite doubles as a loaded-machine check. (--dist loadgroup, to put
# every Prefect test on one server, does not group under pytest 9.2 + pytest-xdist 3.8: xdist
# rewrites item._nodeid, which pytest 9.2 no longer reads.)
test: setup
	$(ACTIVATE) && python -m pytest -n 2 --dist loadfile --durations=15

test-fast: setup
	$(ACTIVATE) && python -m pytest -q tests/unit

# ruff: the formatter and the linter (pyproject.toml [tool.ruff]); CI fails on either
lint: setup
	$(ACTIVATE) && ruff format --check . && ruff check .
