# The whole set-up: `make demo` and `make test` each create .venv/ and install everything on first use.
# The other detectron2 worlds, each in its own virtualenv (README "Troubleshooting"):
#   make test-compiled   detectron2 with compiled ops, built from DETECTRON2_SOURCE (default: the vendored
#                        c69939aa archive) into .venv-d2c; the wheel is cached, so only the first build compiles
#   make test-sources    tier 3: detectron2 v0.6 Python sources and transfer/compat.py's stand-ins, in .venv-d2s
# VENV=DIR picks the virtualenv of any target; D2_EXPECT=compiled|sources makes `test` fail unless that world is
# the one installed (a build that fell back to tier 3 must not pass as the compiled world).
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
D2_VENDORED ?= ../shared/vendor/detectron2-c69939aa.tar.gz
D2_EXPECT ?=
PYTEST_ARGS ?=
# read by tools/install/detectron2.sh
export DETECTRON2_SOURCE FASTSIAM_D2_TIER MAX_JOBS

.PHONY: test demo install clean-venv test-compiled test-sources doctor

install: $(STAMP)

# Reinstalls only when requirements.txt or the detectron2 script changes; a second run costs nothing.
$(STAMP): requirements.txt tools/install/detectron2.sh
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# pip warns about every package missing from the local mirrors; those lines are noise.
	$(PY) -m pip install -q -r requirements.txt 2>&1 | { grep -v "^WARNING: Location" || true; }
	bash tools/install/detectron2.sh $(PY)
	@touch $(STAMP)

test: $(STAMP)
	@$(PY) -m transfer.doctor --summary $(if $(D2_EXPECT),--expect $(D2_EXPECT))
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-compiled:
	$(MAKE) test VENV=.venv-d2c DETECTRON2_SOURCE=$(or $(DETECTRON2_SOURCE),$(D2_VENDORED)) D2_EXPECT=compiled

test-sources:
	$(MAKE) test VENV=.venv-d2s FASTSIAM_D2_TIER=3 D2_EXPECT=sources

doctor: $(STAMP)
	$(PY) -m transfer.doctor

demo: $(STAMP)
	$(PY) -m tools.demo

clean-venv:
	rm -rf $(VENV)
