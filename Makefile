# The two commands a newcomer needs: `make run` and `make test`. Both create .venv when
# it is missing and (re)install the project into it when pyproject.toml changed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run web screenshots test lint typecheck unit bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/supervisor-daemon run --demo

web: $(STAMP)
	$(BIN)/supervisor-daemon web

# The README's pictures of the web page, taken by the browser test's own run.
screenshots: $(STAMP)
	SCREENSHOTS_DIR=docs $(BIN)/pytest tests/acceptance/test_web_browser.py -k live_inbox

lint: $(STAMP)
	$(BIN)/ruff check daemon tests bench
	$(BIN)/ruff format --check daemon tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

test: lint typecheck unit

bench: $(STAMP)
	$(BIN)/python -m bench.persistence

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
