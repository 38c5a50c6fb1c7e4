# Two entry points for a fresh machine: `make demo` (the embedded model) and `make test` (the suite).
# Both create .venv and install what they need; set TORCH_SPEC for another torch build (e.g. CUDA).
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install serve clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m anymodel.demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not gpu" tests

serve: $(STAMP)
	$(BIN)/anymodel serve

clean:
	rm -rf $(VENV) build *.egg-info
