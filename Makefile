# Every target creates .venv and installs what it needs; `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench bench-moldesign bench-moldesign-offline bench-peers lint redis clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,dev]'
	touch $(STAMP)

# The main job: active learning over 1,000 QM9 molecules with real xTB, a short budget.
demo: $(STAMP)
	$(BIN)/steersman run examples/moldesign/spec.py:demo

# redis-server is installed where missing: the tests start their own on a free port.
redis:
	@command -v redis-server >/dev/null 2>&1 || { \
		echo "installing redis-server"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; }

test: $(STAMP) redis
	$(BIN)/python -m pytest -q

bench: $(STAMP) redis
	$(BIN)/python bench/run.py
	$(BIN)/python bench/redis_broker.py
	$(BIN)/python bench/placement.py
	$(BIN)/python bench/moldesign.py
	$(BIN)/python bench/moldesign_offline.py

# Side by side with RQ, Celery, Colmena, Parsl, Dask and Ray. The peers get a virtualenv of
# their own (.venv-peers) with the project installed beside them, so their dependencies
# never touch .venv. Rewrites the peers section of docs/benchmarks.md and docs/bench-peers.png.
PEERS_VENV := .venv-peers
PEERS_STAMP := $(PEERS_VENV)/.installed

$(PEERS_STAMP): pyproject.toml bench/peers/requirements.txt
	$(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(PEERS_VENV)/bin/python -m pip install --quiet -e . -r bench/peers/requirements.txt
	touch $(PEERS_STAMP)

bench-peers: $(PEERS_STAMP) redis
	$(PEERS_VENV)/bin/python bench/peers/run.py

# Selection efficiency, multi-fidelity, a real-xTB campaign and 100k-molecule inference
# (about 20 minutes on 2 cores).
bench-moldesign: $(STAMP)
	$(BIN)/python bench/moldesign.py

# The same selection campaign replayed offline over 60 seeds, to compare models and selectors.
bench-moldesign-offline: $(STAMP)
	$(BIN)/python bench/moldesign_offline.py

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

clean:
	rm -rf $(VENV) .pytest_cache
