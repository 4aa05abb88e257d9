# The two commands of the README:
#   make run    set up (venv, pinned CPU torch, the project) and run the pipeline: dvc repro
#   make test   set up and run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
UV_VERSION := $(shell sed -n 's/^uv==\([^ #]*\).*/\1/p' constraints.txt)
ACTIVATE := . $(VENV)/bin/activate

.PHONY: setup run test test-fast lint
setup: $(VENV)/.installed

# torch==2.13.0 first, with pip: the CPU build (pip finds its file on this machine's disk; a looser
# torch requirement resolved alone pulls a CUDA build). The rest with uv, which sees that torch
# satisfies the project and installs the other ~200 pinned packages in ~40 s where pip takes 2-4
# min. Bytecode compiled at install (pip does; uv when asked): where PYTHONDONTWRITEBYTECODE is set,
# as on our machines, a process would otherwise compile what it imports every time (torch: +2 s).
$(VENV)/.installed: pyproject.toml constraints.txt
	@# the UI test's browser (Debian's chromium); best effort: without it that one test is skipped
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  apt-get install -y -q chromium >/dev/null 2>&1; } || echo "note: no chromium; tests/e2e/test_ui.py will be skipped"
	python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0 uv==$(UV_VERSION)
	$(VENV)/bin/uv pip install -q --compile-bytecode --python $(PY) -c constraints.txt -e '.[test]'
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
