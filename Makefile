# Two entry points for a fresh machine:
#   make book  -> venv, install, fetch data, build the website into _build/html
#   make test  -> venv, install, unit tests + every chapter executed with nbmake
PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.xreg_edu-installed

.PHONY: book test install data unit chapters bench clean

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

book: data
	XREG_EDU_STATIC=1 $(BIN)/jupyter-book build . -W -n --keep-going
	$(BIN)/python -m pytest -q -rs tests/test_book_html.py
	@echo "Website: _build/html/index.html"

unit: install
	$(BIN)/python -m pytest -q tests

chapters: install
	XREG_EDU_QUICK=1 $(BIN)/python -m pytest -q --nbmake --nbmake-timeout=120 book

test: unit chapters

bench: install
	$(BIN)/python benchmarks/bench_density.py

clean:
	rm -rf _build
