# Template repository tasks. The two quick-start commands are `make project` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
OUTPUT_DIR ?= build

.PHONY: help project test test-fast relock check-locks sync clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

# The tools need Python 3.11 or newer and its venv module, which Debian and Ubuntu ship
# apart (python3-venv); said in one line here rather than as ensurepip's or pip's errors.
$(BIN)/pytest: requirements-dev.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { \
	  echo "$(PYTHON) is Python $$($(PYTHON) -c 'import platform; print(platform.python_version())' 2>/dev/null || echo '(none)'), and the template's tools need 3.11 or newer: on Ubuntu 22.04, sudo apt install python3.11 python3.11-venv, then make $(MAKECMDGOALS) PYTHON=python3.11" >&2; exit 1; }
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || { \
	  echo "$(PYTHON) has no venv module: sudo apt install python3-venv (for python3.11: python3.11-venv)" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements-dev.txt
	@touch $@

# ANSWERS: answers to some of the questions, as key=value words, e.g.
# ANSWERS="readme_language=ko framework=tensorflow"; the other questions keep their defaults.
project: $(BIN)/pytest ## Generate a project into build/, asking nothing: the defaults, or ANSWERS="readme_language=ko ..."
	@$(BIN)/python scripts/check_answers.py $(ANSWERS)
	$(BIN)/cookiecutter --no-input . --output-dir $(OUTPUT_DIR) $(ANSWERS)

test: $(BIN)/pytest ## Run the tests (about 7 min); RUN_DOCKER_TESTS=1 adds the Docker tier (about 50 min, 6-7 GB images)
	$(BIN)/python -m pytest

test-fast: $(BIN)/pytest ## Everything but the Docker tier, even with RUN_DOCKER_TESTS=1 (about 7 min)
	$(BIN)/python -m pytest -m "not docker"

relock: $(BIN)/pytest ## Re-resolve every shipped lock (needs PyPI)
	$(BIN)/python scripts/relock.py

check-locks: $(BIN)/pytest ## Fail when a shipped lock no longer matches its inputs (needs PyPI)
	$(BIN)/python scripts/relock.py --check

sync: $(BIN)/pytest ## Regenerate cookiecutter.json from compat.yaml
	$(BIN)/python scripts/sync_cookiecutter_json.py

clean: ## Remove the dev environment and generated projects
	rm -rf $(VENV) $(OUTPUT_DIR)
