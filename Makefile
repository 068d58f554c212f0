# The two commands of the README: `make run` and `make test`. Everything a fresh machine
# needs is created here (the virtualenv from setup.cfg); nothing is fetched but PyPI
# packages by name (and Debian packages by name for `make bench`).
# The distribution's python3 when it is 3.11 or newer with venv support and its headers
# (to compile the hot path): Debian builds it with PGO and LTO, and the gateway costs
# ~15% less CPU per request on it than on a default (pyenv) build. Any python3 >= 3.11
# works: make PYTHON=python3.12
SYSTEM_PYTHON := $(shell /usr/bin/python3 -c 'import ensurepip, os, sys, sysconfig; sys.exit(sys.version_info < (3, 11) or not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' 2>/dev/null && echo /usr/bin/python3)
PYTHON ?= $(or $(SYSTEM_PYTHON),python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test check bench clean demo-cert browser compiled

# editable_mode=compat keeps twisted/plugins/ visible to twistd (a PEP 660 editable
# install hides it); `pip install .` works as well for a normal install (and compiles
# the hot path itself). Here pip installs the Python package only (GATEWAY_PURE_PYTHON)
# and `compiled` builds the hot path in place, with the venv's Cython.
$(STAMP): setup.cfg pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	GATEWAY_PURE_PYTHON=1 $(BIN)/pip install --quiet -e '.[test]' --config-settings editable_mode=compat
	$(BIN)/pip install --quiet 'Cython>=3.0' 'setuptools>=68'
	touch $(STAMP)

# setup.py's HOT_PATH compiled with Cython next to its sources: the first build takes
# about a minute, later ones only rebuild what changed (none: under a second)
compiled: $(STAMP)
	$(BIN)/python setup.py -q build_ext --inplace

# conf/site.toml's TLS listener uses a throwaway self-signed certificate for localhost
# in conf/tls/ (git-ignored, never committed), written when missing
demo-cert: $(STAMP)
	@$(BIN)/python -m gateway.tls.selfsigned conf/tls >/dev/null

run: compiled demo-cert
	@echo "demo backends on 127.0.0.1:8081-8083 (gRPC: 50061-50063), gateway on http://localhost:8080/, https://localhost:8443/ and gRPC 127.0.0.1:50051 (Ctrl-C stops both)"
	@$(BIN)/python -m gateway.demo & demo=$$!; \
	trap 'kill $$demo 2>/dev/null; wait $$demo 2>/dev/null' EXIT INT TERM; \
	$(BIN)/twistd -n --pidfile= gateway -c conf/site.toml

# the status page test drives a real headless browser: Debian's chromium, installed
# when missing (needs root, as on the CI and development machines)
browser:
	@command -v chromium >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

# GATEWAY_EXPECT_COMPILED: tests/test_build.py fails unless the whole hot path is compiled
test: compiled browser
	GATEWAY_EXPECT_COMPILED=1 $(BIN)/python -m pytest

check: compiled demo-cert
	$(BIN)/twistd -n --pidfile= gateway -c conf/site.toml --check

bench: compiled
	bench/run.sh

clean:
	rm -rf $(VENV) build *.egg-info _trial_temp .bench
	find gateway -name '*.c' -o -name '*.so' | xargs rm -f
