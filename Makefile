# Two commands on a fresh Debian machine: `make demo` and `make test`.
# Both install what is missing: system packages through apt (as root), then a .venv.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
SYSTEM_PACKAGES := softhsm2 opensc pcscd libpcsclite-dev vsmartcard-vpcd pcsc-tools gcc swig \
                   make openssl apache2-utils pkg-config chromium chromium-driver \
                   haproxy wrk
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test check lint typecheck bench system-deps venv clean reliability fuzz

demo: venv
	$(PY) -m pki.demo

test: venv
	$(VENV)/bin/ruff check pki cps_login cps_sign tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest -q -p no:cacheprovider --timeout=900

lint: venv
	$(VENV)/bin/ruff check pki cps_login cps_sign tests bench

typecheck: venv
	$(VENV)/bin/mypy

bench: venv
	$(PY) bench/issuance.py
	$(PY) bench/crl.py
	$(PY) bench/ocsp.py
	$(PY) bench/status_servers.py
	$(PY) bench/ready.py --count 2000000 --populate direct
	$(PY) bench/cards.py
	$(PY) bench/login.py
	$(PY) bench/oidc.py
	$(PY) bench/tsa.py
	$(PY) bench/verify.py
	$(PY) bench/incident.py

# Installs only what is missing; `apt-get update` runs first whenever something is.
system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(VENV)/.installed: pyproject.toml | system-deps
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

venv: system-deps $(VENV)/.installed

clean:
	rm -rf $(VENV) var build *.egg-info .mypy_cache .ruff_cache .pytest_cache

# Long variants of tests/reliability (more kills, longer load, minutes of fuzzing), then the
# table in docs/reliability.md. `make test` runs the short variants.
reliability: venv
	rm -rf var/reliability
	CPS_RELIABILITY_LONG=1 CPS_RELIABILITY_REPORT=var/reliability \
	  $(VENV)/bin/pytest -q -p no:cacheprovider --timeout=7200 tests/reliability
	$(PY) -m tests.reliability.report var/reliability docs/reliability.md

# Coverage-guided + property-based fuzzing only, with a long budget (CPS_FUZZ_SECONDS each).
fuzz: venv
	CPS_RELIABILITY_LONG=1 CPS_FUZZ_SECONDS=$${CPS_FUZZ_SECONDS:-300} CPS_FUZZ_KEEP=var/fuzz-crashes \
	  $(VENV)/bin/pytest -q -p no:cacheprovider --timeout=7200 tests/reliability/test_fuzz.py
