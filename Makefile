# The two commands a new user needs (see README.md): `make demo` and `make test`.
# Both set up everything on a fresh Debian/Ubuntu machine (system packages need root or sudo).

VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# Real TTS for the demo corpus and real recordings for its noise pools.
DEMO_DEBS := espeak-ng sound-theme-freedesktop asterisk-core-sounds-en-wav fillets-ng-data fillets-ng-data-cs
# The real services the tests start: a one-node Slurm with accounting, and Chromium for the MLflow UI.
TEST_DEBS := slurmctld slurmd slurm-client slurmdbd munge mariadb-server chromium g++

export HF_HUB_OFFLINE := 1
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: demo test install install-dev system-deps test-system-deps clean

demo: system-deps install
	$(PY) -m ctsl_hpc.launch sweep

# Three pytest workers on two cores: the two cluster groups spend much of their time waiting on Slurm and Ray.
test: system-deps test-system-deps install-dev
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -n 3 --dist loadgroup --no-loadscope-reorder

# torch first, pinned: the local CPU wheel; an unpinned torch would pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

system-deps:
	@dpkg -s $(DEMO_DEBS) >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(DEMO_DEBS); }

test-system-deps:
	@dpkg -s $(TEST_DEBS) >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(TEST_DEBS); }

clean:
	rm -rf $(VENV) runs
