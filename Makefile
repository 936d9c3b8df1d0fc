# `make demo` and `make test` each create .venv when missing and install what they need.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Debian's chromium drives the search page in tests/test_serve.py; `make test` installs it
# and sets RSIR_REQUIRE_BROWSER, so there a missing browser fails the test, not skips it.
CHROMIUM := /usr/bin/chromium

.PHONY: demo test install lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[text,ann,geo,tune,dev]"
	$(PY) -m rsir.setup_offline
	touch $(STAMP)

install: $(STAMP)

$(CHROMIUM):
	@if ! command -v apt-get >/dev/null; then \
		echo "make test: $(CHROMIUM) is missing and there is no apt-get; install chromium with your package manager" >&2; exit 1; \
	elif [ "$$(id -u)" = 0 ]; then SUDO=; \
	elif command -v sudo >/dev/null; then SUDO=sudo; \
	else echo "make test: $(CHROMIUM) is missing; as root run: apt-get update && apt-get install -y --no-install-recommends chromium" >&2; \
		echo "(or run '$(PY) -m pytest', which skips the search-page test without it)" >&2; exit 1; fi; \
	$$SUDO apt-get update && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium

demo: $(STAMP)
	$(VENV)/bin/rsir demo --out out/demo

test: $(STAMP) $(CHROMIUM)
	RSIR_REQUIRE_BROWSER=1 $(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check platform tests jobs bench
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) out runs .pytest_cache
