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

comma := ,

.PHONY: demo test install lint bench clean java postgres

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[text,ann,geo,tune,detect,translate,postgres,dev]"
	$(PY) -m rsir.setup_offline
	touch $(STAMP)

install: $(STAMP) java

# $(call apt_install,WHAT,PACKAGE,HINT): install Debian's PACKAGE (WHAT is missing), as root
# or through sudo; without either, say the command to run and HINT, and fail.
apt_install = if ! command -v apt-get >/dev/null; then \
		echo "make: $(1) is missing and there is no apt-get; install $(2) with your package manager" >&2; exit 1; \
	elif [ "$$(id -u)" = 0 ]; then SUDO=; \
	elif command -v sudo >/dev/null; then SUDO=sudo; \
	else echo "make: $(1) is missing; as root run: apt-get update && apt-get install -y --no-install-recommends $(2)" >&2; \
		echo "($(3))" >&2; exit 1; fi; \
	$$SUDO apt-get update && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(2)

java:
	@command -v java >/dev/null || { $(call apt_install,java,$(JRE_PACKAGE),without it the caption metrics fall back to NLTK$(comma) with a warning); }

$(CHROMIUM):
	@$(call apt_install,$(CHROMIUM),chromium,or run '$(PY) -m pytest'$(comma) which skips the search-page test without it)

postgres:
	@ls $(PG_INITDB) >/dev/null 2>&1 || { $(call apt_install,$(PG_INITDB),postgresql,or run '$(PY) -m pytest'$(comma) which skips the PostgreSQL monitor-store tests without it); }

demo: $(STAMP) java
	$(VENV)/bin/rsir demo --out out/demo

test: $(STAMP) $(CHROMIUM) java postgres
	RSIR_REQUIRE_BROWSER=1 RSIR_REQUIRE_JAVA=1 RSIR_REQUIRE_POSTGRES=1 $(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check platform tests jobs bench
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) out runs .pytest_cache
