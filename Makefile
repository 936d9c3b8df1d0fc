# `make demo` and `make test` each create .venv when missing and install what they need.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Debian's chromium drives the search page in tests/test_serve.py; `make test` installs it
# and sets RSIR_REQUIRE_BROWSER, so there a missing browser fails the test, not skips it.
CHROMIUM := /usr/bin/chromium
# A Java runtime runs COCO's METEOR 1.5 and PTB tokenizer (pycocoevalcap), the caption
# metrics of `rsir evaluate` on pairs; install, demo and test install Debian's
# default-jre-headless when `java` is missing, and `make test` sets RSIR_REQUIRE_JAVA.
JRE_PACKAGE := default-jre-headless
# Debian's postgresql provides initdb/pg_ctl for tests/test_monitor_store_postgres.py, which
# starts a throwaway server of its own (temp folder, free port on 127.0.0.1), never the
# package's `main` cluster on 5432; `make test` installs it and sets RSIR_REQUIRE_POSTGRES.
PG_INITDB := /usr/lib/postgresql/*/bin/initdb

.PHONY: demo test install lint bench clean java postgres

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[text,ann,geo,tune,detect,translate,postgres,dev]"
	$(PY) -m rsir.setup_offline
	touch $(STAMP)

install: $(STAMP) java

java:
	@if command -v java >/dev/null; then exit 0; \
	elif ! command -v apt-get >/dev/null; then \
		echo "make: java is missing and there is no apt-get; install a Java runtime (COCO's METEOR 1.5 needs one)" >&2; exit 1; \
	elif [ "$$(id -u)" = 0 ]; then SUDO=; \
	elif command -v sudo >/dev/null; then SUDO=sudo; \
	else echo "make: java is missing; as root run: apt-get update && apt-get install -y --no-install-recommends $(JRE_PACKAGE)" >&2; \
		echo "(without it the caption metrics fall back to NLTK, with a warning)" >&2; exit 1; fi; \
	$$SUDO apt-get update && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(JRE_PACKAGE)

$(CHROMIUM):
	@if ! command -v apt-get >/dev/null; then \
		echo "make test: $(CHROMIUM) is missing and there is no apt-get; install chromium with your package manager" >&2; exit 1; \
	elif [ "$$(id -u)" = 0 ]; then SUDO=; \
	elif command -v sudo >/dev/null; then SUDO=sudo; \
	else echo "make test: $(CHROMIUM) is missing; as root run: apt-get update && apt-get install -y --no-install-recommends chromium" >&2; \
		echo "(or run '$(PY) -m pytest', which skips the search-page test without it)" >&2; exit 1; fi; \
	$$SUDO apt-get update && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium

postgres:
	@if ls $(PG_INITDB) >/dev/null 2>&1; then exit 0; \
	elif ! command -v apt-get >/dev/null; then \
		echo "make test: $(PG_INITDB) is missing and there is no apt-get; install the PostgreSQL server with your package manager" >&2; exit 1; \
	elif [ "$$(id -u)" = 0 ]; then SUDO=; \
	elif command -v sudo >/dev/null; then SUDO=sudo; \
	else echo "make test: $(PG_INITDB) is missing; as root run: apt-get update && apt-get install -y --no-install-recommends postgresql" >&2; \
		echo "(or run '$(PY) -m pytest', which skips the PostgreSQL monitor-store tests without it)" >&2; exit 1; fi; \
	$$SUDO apt-get update && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql

demo: $(STAMP) java
	$(VENV)/bin/rsir demo --out out/demo

test: $(STAMP) $(CHROMIUM) java postgres
	RSIR_REQUIRE_BROWSER=1 RSIR_REQUIRE_JAVA=1 RSIR_REQUIRE_POSTGRES=1 $(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check platform tests jobs bench
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) out runs .pytest_cache
