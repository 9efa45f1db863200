# anystep — the two commands of the README:
#   make run   set up .venv and serve the bundled models on http://127.0.0.1:8000
#   make test  set up .venv and run the test suite (slow tests: make test-slow)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
EXTRAS ?= train,export,serve,client,triton,dev
STAMP  := $(VENV)/.installed

.PHONY: run test test-slow test-all venv lint clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade --quiet pip
	$(BIN)/pip install --quiet -e '.[$(EXTRAS)]'
	touch $(STAMP)

run: venv
	$(BIN)/anystep serve --host 127.0.0.1 --port 8000

test: venv
	-bash .ci/install-browser.sh
	$(BIN)/python -m pytest -q

test-slow: venv
	$(BIN)/python -m pytest -q -m slow

test-all: venv
	$(BIN)/python -m pytest -q -m "slow or not slow"

lint: venv
	$(BIN)/ruff check anystep training export server client benchmarks tests

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
