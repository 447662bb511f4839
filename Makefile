# One virtualenv for everything. torch is pinned and installed first: the project's
# own requirement (torch>=2.3) is then already met and pip pulls no CUDA build.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
TORCHVISION ?= torchvision==0.28.0
STAMP  := $(VENV)/.installed

.PHONY: install test test-all lint demo clean

# torchvision's model definitions are installed for the tests on its classifier zoo.
# Without --no-deps pip would pull a CUDA torch; its compiled ops do not load on the CPU
# build, which the tests work around (tests/conftest.py), the package never does.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q --no-deps "$(TORCHVISION)"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m "not gpu and not tensorrt"

lint: $(STAMP)
	$(BIN)/ruff check halp_trt lut_builder tests bench
	$(BIN)/ruff format --check halp_trt lut_builder tests bench

demo: $(STAMP)
	$(BIN)/python bench/demo.py --out runs/demo

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
