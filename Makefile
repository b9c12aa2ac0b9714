# `make demo` and `make test` do all the set-up on a fresh machine (no GPU needed).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.lightning-sas-installed

.PHONY: demo test bench install clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	# Quantus (a peer the tests compare against) without its opencv-python requirement: that
	# package would replace opencv-python-headless's cv2 and needs libGL, which servers lack.
	$(PY) -m pip install --quiet --no-deps "quantus==0.6.0"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) examples/ruler_bias/demo.py --out outputs/ruler_bias

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) benchmarks/sas_speed.py --model resnet18 --image-size 64 --probes 8 --device auto --naive --naive-images 1 --header

clean:
	rm -rf $(VENV) outputs lightning_logs .pytest_cache
