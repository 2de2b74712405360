# Template repository tasks. The two quick-start commands are `make project` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
OUTPUT_DIR ?= build

.PHONY: help project test test-fast relock check-locks sync clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(BIN)/pytest: requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements-dev.txt
	@touch $@

project: $(BIN)/pytest ## Generate a project with the default answers into build/
	$(BIN)/cookiecutter --no-input . --output-dir $(OUTPUT_DIR)

test: $(BIN)/pytest ## Run every test (the Docker tier skips without an engine, unless REQUIRE_DOCKER=1)
	$(BIN)/python -m pytest

test-fast: $(BIN)/pytest ## Everything but the Docker tier (seconds)
	$(BIN)/python -m pytest -m "not docker"

relock: $(BIN)/pytest ## Re-resolve every shipped lock (needs PyPI)
	$(BIN)/python scripts/relock.py

check-locks: $(BIN)/pytest ## Fail when a shipped lock no longer matches its inputs (needs PyPI)
	$(BIN)/python scripts/relock.py --check

sync: $(BIN)/pytest ## Regenerate cookiecutter.json from compat.yaml
	$(BIN)/python scripts/sync_cookiecutter_json.py

clean: ## Remove the dev environment and generated projects
	rm -rf $(VENV) $(OUTPUT_DIR)
