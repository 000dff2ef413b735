# ocrheads — two commands do everything on a fresh machine:
#   make book   set up the environment, execute every chapter on the embedded model, build the HTML book
#   make test   set up the environment and run the test suite
# The environment (~5.7 GB, torch + torchvision) is built once into ~/.cache/ocrheads/ (keyed on the
# dependency lists in pyproject.toml) and linked as ./.venv; later runs reuse it in seconds.

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
# One thread per process: on a shared 2-core box two threads can be 50x slower.
export OMP_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export PYTHONDONTWRITEBYTECODE ?= 1
# This checkout first on the import path: the cached environment is shared between clones and holds no
# copy of (or pointer to) the library, so every clone runs its own ocrheads_lib (tests, book, benchmarks).
export PYTHONPATH := $(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH))
CHECK_SOURCE = $(PY) -c 'import os, sys, ocrheads_lib; here = os.path.realpath("$(CURDIR)"); \
	got = os.path.realpath(ocrheads_lib.__file__); \
	sys.exit(0 if got.startswith(here + os.sep) else f"ocrheads_lib is imported from {got}, not from {here}")'

.PHONY: setup test book book-check bench results clean help

help:
	@echo "make book   - set up + execute all notebooks on the embedded model + build the HTML book (_build/html)"
	@echo "make test   - set up + run the test suite"
	@echo "make bench  - run the performance benchmarks (benchmarks/)"
	@echo "make results - regenerate the shipped per-sample records (records/; resumable, hours on a CPU)"
	@echo "make book-check - open the built book in headless Chromium and check widgets and figures"

setup:
	@bash scripts/setup_env.sh

test: setup
	@$(CHECK_SOURCE)
	$(PY) -m pytest -q tests

book: setup
	@$(CHECK_SOURCE)
	@bash scripts/build_book.sh

book-check:
	@[ -x /usr/bin/chromium ] || bash scripts/install_browser.sh
	$(PY) scripts/check_book.py _build/html

bench: setup
	@$(CHECK_SOURCE)
	@for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

# The full-size per-sample records that ship in records/ (ocrheads_lib.records): heads chosen on the selection
# split, masking answered on the evaluation split. Resumable (part files next to the output), progress bars.
RESULTS_MODEL ?= smol-vl
RESULTS_ARGS ?= --tasks passkey_image,passkey_text --n-select 40 --n-eval 200 --ks 5,20 --control-seeds 0,1,2 --batch-size 8
# Gemma 3's retrieval heads at two lengths and the causal test at the short one (chapter 03; heads ranked on seed 0,
# masked on held-out samples of seed 100): scores and answers are cached under records/gemma3-270m_window.jsonl.gz.parts/.
GEMMA_RESULTS_ARGS ?= --selection-seeds 0:1 --evaluation-seeds 100:1 --settings short,long \
	--causal-settings short --n-select 200 --n-eval 100 --ks 2,4,8 --control-seeds 0,1,2 --max-new-tokens 8
results: setup
	@$(CHECK_SOURCE)
	$(PY) -m ocrheads_lib.records regenerate --model $(RESULTS_MODEL) $(RESULTS_ARGS) \
		--out records/$(RESULTS_MODEL)_masking.jsonl.gz
	$(PY) -m ocrheads_lib.records regenerate --model gemma3-270m --experiment window $(GEMMA_RESULTS_ARGS) \
		--out records/gemma3-270m_window.jsonl.gz

clean:
	rm -rf _build book/generated results
