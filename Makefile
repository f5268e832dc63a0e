# Entry points for a fresh machine:
#   make book  -> venv, install, fetch data, build the website into _build/html (MathJax vendored from npm, Colab
#                 copies in _build/html/_colab), then check every page offline in headless Chromium
#   make test  -> venv, install, unit tests + every chapter executed with nbmake
#   make lab   -> JupyterLab on the chapters, from the same venv (LAB_ARGS: extra options, e.g. --no-browser)
PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.xreg_edu-installed

.PHONY: book test install data unit chapters bench clean lab browser tools timing

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# A CPU torch goes in first when the venv has none, so the ranges below never pull a CUDA build.
$(STAMP): $(BIN)/python requirements.txt pyproject.toml
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "torch==$(TORCH_VERSION)"
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

install: $(STAMP)

data: install
	$(BIN)/python data_scripts/fetch_data.py

# The website needs two programs besides the venv: npm (MathJax comes from the npm registry at build time) and a
# Chromium for the offline page test. As root with apt-get they are installed; otherwise a clear message stops.
tools:
	@command -v npm >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get update -q && apt-get install -y -q npm) >/dev/null; } || \
	  { echo "make book: npm is needed to vendor MathJax (apt-get install -y npm)"; exit 1; }
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || command -v google-chrome >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get update -q && apt-get install -y -q chromium) >/dev/null; } || \
	  { echo "make book: a Chromium is needed for the offline page test (apt-get install -y chromium)"; exit 1; }

book: data tools
	XREG_EDU_STATIC=1 $(BIN)/jupyter-book build . -W -n --keep-going
	$(BIN)/python -m pytest -q -rs tests/test_book_html.py tests/test_colab.py
	@echo "Website: _build/html/index.html (Colab copies: _build/html/_colab/)"

lab: install
	$(BIN)/jupyter lab --notebook-dir=book $$([ "$$(id -u)" = 0 ] && echo --allow-root) $(LAB_ARGS)

# Seconds per chapter (quick mode, 2 threads) -> benchmarks/results/chapter_times.json, read by the instructor page
timing: install
	$(BIN)/python benchmarks/time_chapters.py

unit: install
	$(BIN)/python -m pytest -q tests

chapters: install
	XREG_EDU_QUICK=1 $(BIN)/python -m pytest -q --nbmake --nbmake-timeout=120 book

test: unit chapters

bench: install
	$(BIN)/python benchmarks/bench_density.py

clean:
	rm -rf _build
