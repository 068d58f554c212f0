# The two commands of the README: `make run` and `make test`. Everything a fresh machine
# needs is created here (the virtualenv from setup.cfg); nothing is fetched but PyPI
# packages by name (and Debian packages by name for `make bench`).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test check bench clean demo-cert browser

# editable_mode=compat keeps twisted/plugins/ visible to twistd (a PEP 660 editable
# install hides it); `pip install .` works as well for a normal install.
$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]' --config-settings editable_mode=compat
	touch $(STAMP)

# conf/site.toml's TLS listener uses a throwaway self-signed certificate for localhost
# in conf/tls/ (git-ignored, never committed), written when missing
demo-cert: $(STAMP)
	@$(BIN)/python -m gateway.tls.selfsigned conf/tls >/dev/null

run: $(STAMP) demo-cert
	@echo "demo backends on 127.0.0.1:8081-8083 (gRPC: 50061-50063), gateway on http://localhost:8080/, https://localhost:8443/ and gRPC 127.0.0.1:50051 (Ctrl-C stops both)"
	@$(BIN)/python -m gateway.demo & demo=$$!; \
	trap 'kill $$demo 2>/dev/null; wait $$demo 2>/dev/null' EXIT INT TERM; \
	$(BIN)/twistd -n --pidfile= gateway -c conf/site.toml

# the status page test drives a real headless browser: Debian's chromium, installed
# when missing (needs root, as on the CI and development machines)
browser:
	@command -v chromium >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

test: $(STAMP) browser
	$(BIN)/python -m pytest

check: $(STAMP) demo-cert
	$(BIN)/twistd -n --pidfile= gateway -c conf/site.toml --check

bench: $(STAMP)
	bench/run.sh

clean:
	rm -rf $(VENV) build *.egg-info _trial_temp .bench
