# fleetpki: `make demo` runs the whole story, `make test` the whole suite.
# Both set up what they need: the virtualenv, Python packages and, through
# apt-get when missing, system packages (openssl, PostgreSQL, mosquitto, Chromium, Node.js),
# and the OpenID provider the portal's browser tests sign in at (npm, outside the repo).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PYTEST_WORKERS ?= 2
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)

.PHONY: demo test lint typecheck unit venv system-deps azure-venv oidc-provider \
	portal-screenshots bench soak clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $(STAMP)

system-deps:
	@bash scripts/ensure-system-deps.sh

azure-venv:
	@bash scripts/azure-venv.sh

# Needs node and npm, hence after system-deps.
oidc-provider: system-deps
	@bash scripts/ensure-oidc-provider.sh

lint: venv
	$(BIN)/ruff check src tests $(wildcard bench)
	$(BIN)/ruff format --check src tests $(wildcard bench)

typecheck: venv
	$(BIN)/mypy --strict

# pytest exits 5 when it collects nothing: that is a failure here, as is any other
# non-zero status. The suite runs on PYTEST_WORKERS processes (pytest-xdist; many tests
# wait on servers and sockets: 2,060 tests took 13 min 42 s on two workers and two cores,
# where 1,722 had taken 13 min 38 s on one process); tests
# that bind the fixed ports the Azure SDKs dial share one worker (xdist_group
# "azure_ports"). PYTEST_WORKERS=0 runs everything in one process.
unit: venv system-deps azure-venv oidc-provider
	$(BIN)/python -m pytest -q -p no:cacheprovider -n $(PYTEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

# The portal's browser tests, saving their screenshots into docs/portal/ (docs/portal.md),
# then quantised to small PNGs by pngquant (apt-get install pngquant).
portal-screenshots: venv system-deps oidc-provider
	@command -v pngquant >/dev/null || { echo "portal-screenshots: pngquant is needed (apt-get install pngquant)" >&2; exit 1; }
	FLEETPKI_PORTAL_SCREENSHOTS=docs/portal $(BIN)/python -m pytest -q -p no:cacheprovider tests/portal
	pngquant --quality=60-85 --speed 1 --strip --force --ext .png docs/portal/*.png

test: lint typecheck unit

demo: venv system-deps
	$(BIN)/fleetpki demo

bench: venv system-deps
	@bash scripts/ensure-bench-deps.sh
	$(BIN)/python bench/run_all.py

# 2,000 devices for 3 minutes against fleetpki, then mosquitto (about 10 minutes);
# SOAK_ARGS="--devices 200 --seconds 30" for a short one.
soak: venv system-deps
	@bash scripts/ensure-bench-deps.sh
	$(BIN)/python bench/soak.py $(SOAK_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
