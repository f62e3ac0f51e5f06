# vgic: `make demo` runs the built-in demo, `make test` runs every check.
# Both install what they need on a fresh Debian machine: Python packages into .venv
# (extras: dev = lint/test/build tools, machine = Unicorn and pylibfdt for `vgic run`,
# guests = ziglang, the guests' compiler where aarch64-linux-gnu-gcc is missing), and (when
# root and missing) the Debian packages the guests and differential tests use.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: all test demo lint typecheck unit bench fuzz guests deps sysdeps clean third-party

all: test

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,machine,guests]'
	touch $(STAMP)

deps: $(STAMP)

sysdeps:
	@bash scripts/install-debian-deps.sh

lint: deps
	$(VENV)/bin/ruff check src tests bench fuzz
	$(VENV)/bin/ruff format --check src tests bench fuzz

typecheck: deps
	$(VENV)/bin/mypy

unit: deps
	$(VENV)/bin/pytest

guests: sysdeps deps
	$(MAKE) -C guests PYTHON=$(abspath $(PY))

test: sysdeps deps lint typecheck guests third-party unit

# The demo: the its_demo guest (driver bring-up, MSIs through GITS_TRANSLATER and INT,
# IRQ delivery on 4 CPUs) on vgic's virt machine, then the model-level narrated demo.
demo: guests
	$(VENV)/bin/vgic run --smp 4 --timeout 120 --report guests/out/its_demo.elf
	$(VENV)/bin/vgic demo

# Third-party guest parts for tests/test_third_party.py, tests/test_linux_nvme.py and the
# Linux bench rows (Debian's arm64 kernel and busybox-static, via apt-get download into
# .cache/third-party/); the tests skip when they are missing.
third-party:
	-sh scripts/fetch-third-party.sh || echo "note: third-party kernel or busybox not fetched; their tests will skip"

bench: sysdeps deps guests third-party
	$(PY) bench/run.py

# A long fuzzing campaign (10 million operations by default) with a progress line:
# atheris when it installs (the `fuzz` extra), the pure-Python mutator otherwise.
# Violating inputs are kept in fuzz/crashes/ and tests/fuzz_regressions/.
# FUZZ_ARGS="--target snapshot|cli|all --seconds N" fuzzes the files and command lines vgic reads.
FUZZ_ARGS ?= --ops 10000000
fuzz: deps
	$(PY) -m pip install -q -e '.[fuzz]' || echo "atheris did not install: the Python mutator fuzzes instead"
	$(PY) fuzz/run.py $(FUZZ_ARGS)

clean:
	rm -rf $(VENV) build .pytest_cache .mypy_cache .ruff_cache
