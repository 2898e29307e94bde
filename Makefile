# Quick start: `make run` serves the portal, `make test` runs every test.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8000
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: run demo cluster test test-sqlite test-services lint venv migrate clean

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
	$(PY) -m portal.serve -b 127.0.0.1 -p $(PORT) portal.asgi:application

# Offline demo: the stand-in Hugging Face on 127.0.0.1:8090 and a seeded pool, in its own var/demo.
DEMO_ENV := PORTAL_VAR_DIR=var/demo HF_API_BASE=http://127.0.0.1:8090 HF_INFERENCE_BASE_URL=http://127.0.0.1:8090/v1
demo: venv
	$(DEMO_ENV) $(PY) manage.py migrate --noinput -v0
	$(DEMO_ENV) $(PY) manage.py bootstrap
	$(DEMO_ENV) $(PY) manage.py seed_demo
	$(PY) manage.py standin_upstream --port 8090 & standin=$$!; \
	trap "kill $$standin 2>/dev/null" EXIT INT TERM; \
	$(DEMO_ENV) $(PY) -m portal.serve -b 127.0.0.1 -p $(PORT) portal.asgi:application

# The cluster on loopback: throwaway PostgreSQL + Redis, PORTAL_WORKERS daphne workers, nginx on PORT
# in front (Debian's postgresql, redis-server and nginx). Ctrl-C stops it all.
# CLUSTER_ARGS=--standin adds the stand-in Hugging Face and demo tokens, as `make demo` does.
PORTAL_WORKERS ?= 2
cluster: venv
	$(PY) scripts/cluster.py --workers $(PORTAL_WORKERS) --port $(PORT) $(CLUSTER_ARGS)

# The whole suite on SQLite, then again on a throwaway PostgreSQL + Redis when their
# server binaries are installed (skipped with a message otherwise).
test: test-sqlite test-services

test-sqlite: venv
	$(PY) -m pytest -q

test-services: venv
	$(PY) scripts/with_services.py -- $(PY) -m pytest -q

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) var .pytest_cache
