# The two commands of the README:
#   make serve   start the server on the embedded SQLite default with sample data
#   make test    run the whole test suite (installs DCMTK, Orthanc and docker-compose
#                when missing, as root)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: serve test bench install system-tools clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,postgres]'
	touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(BIN)/worklist-mpps serve $(ARGS)

system-tools:
	./scripts/install-system-tools.sh

test: $(STAMP) system-tools
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP) system-tools
	$(BIN)/python bench/run.py --write bench/RESULTS.md $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
