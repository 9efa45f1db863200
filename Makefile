# anystep — the two commands of the README:
#   make run   set up .venv and serve the bundled models on http://127.0.0.1:8000
#   make test  set up .venv and run the test suite (slow tests: make test-slow)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
EXTRAS ?= train,export,serve,client,triton,dev
STAMP  := $(VENV)/.installed

.PHONY: run test test-slow test-all venv triton-venv ray-extra lint clean gpu-wheelhouse gpu-check

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade --quiet pip
	$(BIN)/pip install --quiet -e '.[$(EXTRAS)]'
	touch $(STAMP)

# The Triton server bundled with nvidia-pytriton (CPU, Python backend) needs numpy<2: own venv.
# Debian's python3 is preferred (pyenv Pythons need LIBDIR on LD_LIBRARY_PATH; the worker sets it).
TRITON_PY ?= $(shell test -x /usr/bin/python3 && echo /usr/bin/python3 || echo $(PYTHON))
TRITON_STAMP := .venv-triton/.installed
triton-venv: $(TRITON_STAMP)
$(TRITON_STAMP): pyproject.toml
	test -x .venv-triton/bin/python || $(TRITON_PY) -m venv .venv-triton
	.venv-triton/bin/pip install --quiet 'nvidia-pytriton>=0.5' 'onnxruntime>=1.18' 'numpy<2'
	touch $(TRITON_STAMP)

run: venv
	$(BIN)/anystep serve --host 127.0.0.1 --port 8000

test: venv
	-$(MAKE) triton-venv
	-bash .ci/install-browser.sh
	$(BIN)/python -m pytest -q

# The slow suite runs real Ray Serve replicas (tests/test_ray_serve.py): the ray extra, once.
RAY_STAMP := $(VENV)/.ray-installed
ray-extra: $(RAY_STAMP)
$(RAY_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[$(EXTRAS),ray]'
	touch $(RAY_STAMP)

test-slow: venv ray-extra
	$(BIN)/python -m pytest -q -m slow

test-all: venv ray-extra
	$(BIN)/python -m pytest -q -m "slow or not slow"

# The GPU check (benchmarks/gpu_check.py). Here, with a package index: build the wheels the
# offline device lacks (fastapi, uvicorn, pydantic, onnxscript, the anystep wheel; ~16 MiB,
# checked against the 64 MiB carry limit). On the device (repo root, .gpu-wheelhouse carried,
# torch 2.11 + CUDA preinstalled, no venv, no pip needed): make gpu-check GPU_OUT="$$OUT"
GPU_WHEELS ?= .gpu-wheelhouse
GPU_OUT    ?= benchmarks/results
GPU_PYTHON ?= python3
gpu-wheelhouse: venv
	$(BIN)/python -m anystep.benchmarks.gpu_wheelhouse --out $(GPU_WHEELS)

gpu-check:
	timeout 590 $(GPU_PYTHON) benchmarks/gpu_check.py --wheelhouse $(GPU_WHEELS) --out $(GPU_OUT) --budget-s 450

lint: venv
	$(BIN)/ruff check anystep training export server client benchmarks tests

clean:
	rm -rf $(VENV) .venv-triton .pytest_cache build *.egg-info
