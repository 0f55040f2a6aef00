# The two commands a newcomer needs: `make test` and `make demo` (see README).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_SERVE ?= 1
# Ports on 127.0.0.1: the admin, the Langfuse and the Stripe emulator.
DEMO_PORT ?= 8000
DEMO_LANGFUSE_PORT ?= 8010
DEMO_STRIPE_PORT ?= 8011
# The demo's own SQLite file (relative to this directory), created anew by
# every run as the emulators start empty too; db.sqlite3 is never touched.
DEMO_DB ?= demo.sqlite3

# The demo runs on the embedded default (SQLite, no Redis) against the
# in-process emulators; nothing here reaches a real provider.
DEMO_ENV := env -u REDIS_URL DATABASE_URL=sqlite:///$(abspath $(DEMO_DB)) DEBUG=1 \
	STRIPE_API_KEY=sk_test_demo_emulator \
	STRIPE_API_BASE=http://127.0.0.1:$(DEMO_STRIPE_PORT)

.PHONY: venv lint test demo clean

$(BIN)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

venv: $(BIN)/.installed

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Needs the Postgres and Redis of this machine running (.ci/run starts them).
# tests/browser drive Debian's Chromium (Playwright may not download its own
# browsers here): installed when missing, through sudo unless already root.
test: lint
	@test -x /usr/bin/chromium || { \
		sudo=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
		$$sudo apt-get update -qq && \
		$$sudo env DEBIAN_FRONTEND=noninteractive \
			apt-get install -y --no-install-recommends chromium; }
	$(BIN)/pytest --create-db

# --fresh migrates a new demo database once the ports are known to be free.
demo: venv
	$(DEMO_ENV) $(BIN)/python manage.py demo --fresh --port $(DEMO_PORT) \
		--langfuse-port $(DEMO_LANGFUSE_PORT) \
		$(if $(filter 0,$(DEMO_SERVE)),--no-serve,)

clean:
	rm -rf $(VENV) $(DEMO_DB) $(DEMO_DB).lock .pytest_cache .ruff_cache
