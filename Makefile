# Every target that runs code depends on the venv; `make test` also brings up what the tests need
# (Docker engine, the busybox test image), so a fresh clone needs nothing else.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The agent as operators install it (moorage[agent] only): bench.agent_soak measures its footprint there.
AGENT_VENV := .venv-agent
AGENT_STAMP := $(AGENT_VENV)/.installed

.PHONY: install protos lint test test-env unit run bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

$(AGENT_STAMP): pyproject.toml
	rm -rf $(AGENT_VENV)  # afresh: what the agent no longer needs must not linger in it
	$(PY) -m venv $(AGENT_VENV)
	$(AGENT_VENV)/bin/pip install -q --upgrade pip
	$(AGENT_VENV)/bin/pip install -q -e '.[agent]'
	touch $(AGENT_STAMP)

protos: $(STAMP)
	$(BIN)/python -m protos.generate

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy agent coordinator common protos tests bench
	$(BIN)/lint-imports

test-env:
	bash tests/env/ensure-docker.sh
	bash tests/env/build-test-image.sh
	bash tests/env/ensure-postgres.sh
	bash tests/env/ensure-test-names.sh
	bash tests/env/ensure-debian-package.sh promtool prometheus "promtool checks both daemons' /metrics"
	bash tests/env/ensure-debian-package.sh chromium chromium "the status page's test drives it headless"

test: $(STAMP) test-env lint
	@if [ -n "$$CI" ]; then export MOORAGE_REQUIRE_DOCKER=1 MOORAGE_REQUIRE_POSTGRES=1; fi; \
	$(BIN)/pytest -q -p no:cacheprovider $(PYTEST_ARGS)

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit $(PYTEST_ARGS)

run: $(STAMP)
	bash tests/env/ensure-docker.sh
	bash tests/env/build-test-image.sh
	$(BIN)/python -m tests.devrun

bench: $(STAMP) $(AGENT_STAMP) test-env
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) $(AGENT_VENV) .moorage .mypy_cache .ruff_cache .pytest_cache
