#!/usr/bin/env bash
# Build the HTML book (`make book`):
#   1. execute every notebooks/NN_*.ipynb (sorted) with papermill, cwd notebooks/, kernel python3 of
#      .venv, parameters from book/params.yml, into book/generated/ (git-ignored) — cached: a notebook
#      whose source, parameters, library files and upstream notebooks are unchanged is not re-run
#      (key in book/generated/NN_*.ipynb.key; see ocrheads_lib/bookbuild.py). FORCE=1 re-runs all.
#      Two chapters run at once on a machine with two cores or more (BOOK_JOBS=1: one after another);
#      a chapter starts when the chapters whose results it reads (its metadata ocrheads.needs) are done.
#   2. write the introduction's "Meet the models" and "Scale" sections (python -m ocrheads_lib.meet_models
#      book/intro_models: the cards' accuracies, smol-vl's answers to one page per task; ~40 s, git-ignored);
#   3. write the "Findings at a glance" page's table (python -m ocrheads_lib.scorecard book/findings_at_a_glance,
#      git-ignored): one row per claim of the paper from the released score files and the shipped records;
#   4. build the HTML with Jupyter Book 1.x (`jupyter-book build .`, execution off: the notebooks are
#      already executed) into _build/html.
# Fails (exit 1) when any notebook fails — after trying all of them, so one run lists every broken
# chapter — and then does not build the HTML. Prints per-notebook timings and the total.
# BOOK_PARAMS=other.yml uses another parameter file (e.g. the whole book on a real model).
#
# Before step 1, every shipped records file (records/*.jsonl.gz) is audited (ocrheads_lib.records audit): a seeded
# 1 % is recomputed and must match byte for byte, and records of other weights are refused; either stops the build.
#
# Table of contents: _toc.yml is static and lists the chapters with a glob over book/generated/,
# so the book contains exactly the chapters whose notebooks exist (a chapter not yet written is
# simply absent, never a broken link); the fixed pages (intro, method, model card, …) are listed
# by name.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=.venv/bin/python
JB=.venv/bin/jupyter-book
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} TOKENIZERS_PARALLELISM=${TOKENIZERS_PARALLELISM:-false}
export PYDEVD_DISABLE_FILE_VALIDATION=1   # silences a debugger warning in every kernel's stderr

if [ ! -x "$PY" ] || [ ! -x "$JB" ]; then
    echo "[book] .venv is missing or lacks jupyter-book: run 'make setup' (or 'make book')" >&2
    exit 1
fi
if [ -d _static ]; then
    echo "[book] a top-level _static/ exists: Jupyter Book 1 would load its .js files twice;" \
         "vendored JS lives in book/vendor/ (see scripts/vendor_widgets_js.sh)" >&2
    exit 1
fi
for f in book/vendor/jupyter-widgets/embed-amd.js book/vendor/jupyter-widgets/require.js; do
    [ -s "$f" ] || { echo "[book] missing $f: run scripts/vendor_widgets_js.sh (needs npm)" >&2; exit 1; }
done

t0=$(date +%s)
# The shipped full-size records (records/*.jsonl.gz, ocrheads_lib.records): before any chapter reads them, recompute
# a seeded 1 % of each file (at least one record per condition; one model load per file) and stop the build when a
# record differs by one byte or the file was made with other weights (stale: refused, never skipped).
shopt -s nullglob
for records_file in records/*.jsonl.gz; do
    echo "[book] audit $records_file (python -m ocrheads_lib.records audit: 1 % recomputed, one per condition)"
    if ! "$PY" -m ocrheads_lib.records audit "$records_file" --fraction 0.01; then
        echo "[book] the audit of $records_file failed (above: what differs and the command that regenerates" \
             "it; or run 'make results'); the book is not built from records that do not reproduce" >&2
        exit 1
    fi
done
shopt -u nullglob
t_audit=$(date +%s)
force=()
if [ "${FORCE:-0}" = "1" ]; then force=(--force); fi
mkdir -p _build
# (each kernel prints a warning about its localhost TCP transport; filtered out as noise)
"$PY" -m ocrheads_lib.bookbuild --notebooks notebooks --out book/generated --params "${BOOK_PARAMS:-book/params.yml}" \
      --kernel python3 --timings _build/notebook_timings.json "${force[@]}" \
      2> >(grep -v --line-buffered "Kernel is running over TCP without encryption" >&2)
t1=$(date +%s)

echo "[book] the introduction's models and scale (ocrheads_lib.meet_models: card data, smol-vl's answers)"
"$PY" -m ocrheads_lib.meet_models book/intro_models

echo "[book] findings at a glance (ocrheads_lib.scorecard: released files and the audited shipped records)"
"$PY" -m ocrheads_lib.scorecard book/findings_at_a_glance

echo "[book] jupyter-book build (execution off)"
# Warnings are shown but do not fail the build; a failing Sphinx build does.
rc=0
"$JB" build . --builder html > _build/jupyter_book.log 2>&1 || rc=$?
grep -E "WARNING|ERROR" _build/jupyter_book.log | tail -n 40 || true
if [ "$rc" -ne 0 ] || [ ! -f _build/html/index.html ]; then
    echo "[book] jupyter-book build failed (exit $rc), see _build/jupyter_book.log" >&2
    tail -n 30 _build/jupyter_book.log >&2
    exit 1
fi
t2=$(date +%s)
echo "[book] timings: audit $((t_audit - t0)) s, notebooks $((t1 - t_audit)) s, HTML $((t2 - t1)) s, total $((t2 - t0)) s"
echo "[book] open _build/html/index.html  (check in a browser: make book-check)"
