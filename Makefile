# Two commands on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: install demo test test-fast notebook bench protos lint smoke clean

$(PY):
	python3 -m venv $(VENV)

# torch first, exactly 2.13.0 (the CPU build on this machine's disk), then the package with extras.
$(STAMP): pyproject.toml | $(PY)
	@echo "==> installing torch 2.13.0 (CPU) into $(VENV) ..."
	$(PY) -m pip install --disable-pip-version-check -q torch==2.13.0
	@echo "==> installing xdp-compute and its extras (he, train, postgres, spark, dev) into $(VENV) ..."
	$(PY) -m pip install --disable-pip-version-check -q -e '.[he,train,postgres,spark,dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/xdp demo

test: install
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)

test-fast: install
	$(VENV)/bin/pytest -q -m "not slow" $(PYTEST_ARGS)

# notebooks/walkthrough.ipynb top to bottom in a fresh venv kernel (its own local cluster unless
# XDP_URL and XDP_TOKEN are set); fails with the failing cell's error.
notebook: install
	$(PY) scripts/run_notebook.py notebooks/walkthrough.ipynb

bench: install
	$(PY) benchmarks/bench_secagg.py
	$(PY) benchmarks/bench_query.py
	$(PY) benchmarks/bench_he.py
	$(PY) benchmarks/bench_dpsgd.py
	$(PY) benchmarks/bench_tls.py
	$(PY) benchmarks/bench_gateway.py
	$(PY) benchmarks/bench_secagg_scale.py
	$(PY) benchmarks/bench_train_round.py

protos: install
	$(PY) scripts/gen_protos.py

lint: install
	$(VENV)/bin/ruff check src tests

smoke: install
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) ../shared/acceptance/smoke.py platform stats he train log

clean:
	rm -rf $(VENV) .xdp .pytest_cache
