# vgic: `make demo` runs the built-in demo, `make test` runs every check.
# Both install what they need on a fresh Debian machine: Python packages into .venv,
# and (when root and missing) the Debian packages the guests and differential tests use.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: all test demo lint typecheck unit bench fuzz guests deps sysdeps clean

all: test

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,machine]'
	touch $(STAMP)

deps: $(STAMP)

sysdeps:
	@bash scripts/install-debian-deps.sh

lint: deps
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

typecheck: deps
	$(VENV)/bin/mypy

unit: deps
	$(VENV)/bin/pytest

guests: sysdeps deps
	$(MAKE) -C guests PYTHON=$(abspath $(PY))

test: sysdeps deps lint typecheck guests unit

# The demo: the its_demo guest (driver bring-up, MSIs through GITS_TRANSLATER and INT,
# IRQ delivery on 4 CPUs) on vgic's virt machine, then the model-level narrated demo.
demo: guests
	$(VENV)/bin/vgic run --smp 4 --timeout 120 guests/out/its_demo.elf
	$(VENV)/bin/vgic demo

bench: sysdeps deps
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) build .pytest_cache .mypy_cache .ruff_cache
