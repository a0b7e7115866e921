# The whole set-up: `make demo` and `make test` each create .venv/ and install everything on first use.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo install clean-venv

install: $(STAMP)

# Reinstalls only when requirements.txt or the detectron2 script changes; a second run costs nothing.
$(STAMP): requirements.txt tools/install_detectron2.sh
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# pip warns about every package missing from the local mirrors; those lines are noise.
	$(PY) -m pip install -q -r requirements.txt 2>&1 | { grep -v "^WARNING: Location" || true; }
	bash tools/install_detectron2.sh $(PY)
	@touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(PY) -m tools.demo

clean-venv:
	rm -rf $(VENV)
