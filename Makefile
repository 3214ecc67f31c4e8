# One entry point for everything: each target sets up what it needs on a fresh machine.
#   make test   sanity + units + integration (against the local ECR endpoint)
#   make demo   push a sample image to the local ECR endpoint and pull it back
#   make bench  the benchmarks against peers (bench/README.md); BENCH_ARGS="--scenarios 2 --quick" for a part
#   make test-faults  the fault matrix, nightly size (CONTRIBUTING.md); FAULT_ARGS="--faults kill --targets oci" for a part
# See CONTRIBUTING.md for running one test.

PYTHON ?= python3
VENV := $(CURDIR)/.venv
BIN := $(VENV)/bin
# ansible-test only runs inside .../ansible_collections/NAMESPACE/NAME, so tests run in a copy laid out there.
COLLECTION := $(CURDIR)/.build/ansible_collections/ecrkit/images
TEST_PYTHON := 3.11
export PATH := $(BIN):$(PATH)

BENCH_ARGS ?=
FAULT_ARGS ?=

.PHONY: venv layout test sanity units integration test-faults demo bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -r requirements.txt
	touch $@

layout: venv
	scripts/layout.sh "$(COLLECTION)" "$(BIN)/python"

# Runs all three suites even when one fails, prints each runner's summary, and fails if any failed.
test: layout
	@status=0; \
	$(MAKE) --no-print-directory sanity || status=1; \
	$(MAKE) --no-print-directory units || status=1; \
	$(MAKE) --no-print-directory integration || status=1; \
	if [ $$status -eq 0 ]; then echo "make test: all suites passed"; else echo "make test: FAILED (see above)"; fi; \
	exit $$status

sanity: layout
	cd "$(COLLECTION)" && ansible-test sanity --python $(TEST_PYTHON) --color no

units: layout
	cd "$(COLLECTION)" && ansible-test units --python $(TEST_PYTHON) --color no --num-workers 2

integration: layout
	cd "$(COLLECTION)" && scripts/with-emulator.sh \
		ansible-test integration --python $(TEST_PYTHON) --color no

# Every fault x target of tests/faults/fault_matrix.py with 20 seeds (a fixed sample of it runs in `make units`).
# Needs root (a private containerd, tmpfs mounts); fails when a run lost data or failed unclearly.
test-faults: layout
	cd "$(COLLECTION)" && $(BIN)/python tests/faults/fault_matrix.py --runs 20 $(FAULT_ARGS)

demo: layout
	cd "$(COLLECTION)" && scripts/with-emulator.sh $(BIN)/python scripts/demo.py

# Installs its own system tools (Distribution registry, skopeo, containerd, curl) and matplotlib.
bench: layout
	scripts/install-tools.sh docker-registry=docker-registry skopeo=skopeo containerd=containerd ctr=containerd \
		curl=curl openssl=openssl
	$(BIN)/python -m pip install --disable-pip-version-check -q -r bench/requirements.txt
	cd "$(COLLECTION)" && $(BIN)/python bench/run.py --out "$(CURDIR)/bench/results" $(BENCH_ARGS)

clean:
	rm -rf .build tests/output
