# The two commands of the README:
#   make serve   start the server on the embedded SQLite default with sample data
#   make test    run the whole test suite, then its DIMSE tests with dimse_fast_path off
#                (installs DCMTK, Orthanc and docker-compose when missing, as root)
# Dependencies come from the lock files, every file checked against its hash
# (requirements.lock: runtime, for the Dockerfile; requirements-test.lock: runtime and
# test tools, for make install/test and CI); `make lock` refreshes both (README).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: serve test check bench install system-tools install-system clean lock screenshots

$(STAMP): pyproject.toml requirements-test.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements-test.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(BIN)/worklist-mpps serve $(ARGS)

system-tools:
	./scripts/install-system-tools.sh

# a plain Debian/Ubuntu host: virtualenv under /opt, system user, /etc/worklist-mpps,
# hardened systemd unit, Orthanc configuration fragment (docs/deploy-debian.md);
# DESTDIR=/some/root installs into a staging root (the test does)
install-system:
	./scripts/install-system.sh

# the whole suite, then the DIMSE tests again on pynetdicom's stock paths
# (dimse_fast_path false, README)
# The rules the code keeps (issue 13): import contracts between the wings, lint and
# format, types. make test runs them first, then the suite.
check: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/ruff check worklist_mpps tests bench
	$(BIN)/ruff format --check worklist_mpps tests bench
	$(BIN)/mypy

test: $(STAMP) system-tools check
	$(BIN)/python -m pytest $(PYTEST_ARGS)
	$(BIN)/python -m pytest -m dimse --dimse-fast-path=off $(PYTEST_ARGS)

# the README's screenshots of the operator page, written by its browser tests
screenshots: $(STAMP) system-tools
	WM_SCREENSHOTS=$(CURDIR)/docs/screenshots $(BIN)/python -m pytest -q tests/test_ui_*.py

bench: $(STAMP) system-tools
	$(BIN)/python bench/run.py --write bench/RESULTS.md $(BENCH_ARGS)

# uv resolves for every platform and Python >= 3.11 at once (--universal) and writes
# pip's hash format; the test lock is constrained to the runtime lock's versions.
# LOCK_ARGS=--upgrade (or --upgrade-package NAME) moves pins forward.
UV ?= uv
LOCK_FLAGS = --universal --python-version 3.11 --generate-hashes --quiet $(LOCK_ARGS)
BUILD_REQS = setuptools>=77

lock:
	echo '$(BUILD_REQS)' | $(UV) pip compile pyproject.toml - --extra postgres \
		$(LOCK_FLAGS) -o requirements.lock
	echo '$(BUILD_REQS)' | $(UV) pip compile pyproject.toml - --extra postgres --extra test \
		-c requirements.lock $(LOCK_FLAGS) -o requirements-test.lock

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
