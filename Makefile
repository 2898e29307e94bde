# Quick start: `make run` serves the portal, `make test` runs every test.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8000
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: run test test-sqlite test-services venv migrate clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

migrate: venv
	$(PY) manage.py migrate --noinput

run: migrate
	$(PY) manage.py bootstrap
	$(VENV)/bin/daphne -b 127.0.0.1 -p $(PORT) portal.asgi:application

# The whole suite on SQLite, then again on a throwaway PostgreSQL + Redis when their
# server binaries are installed (skipped with a message otherwise).
test: test-sqlite test-services

test-sqlite: venv
	$(PY) -m pytest -q

test-services: venv
	$(PY) scripts/with_services.py -- $(PY) -m pytest -q

clean:
	rm -rf $(VENV) var .pytest_cache
