# One entry point for everything: each target sets up what it needs on a fresh machine.
#   make test   sanity + units + integration (against the local ECR endpoint)
#   make demo   push a sample image to the local ECR endpoint and pull it back
# See CONTRIBUTING.md for running one test.

PYTHON ?= python3
VENV := $(CURDIR)/.venv
BIN := $(VENV)/bin
# ansible-test only runs inside .../ansible_collections/NAMESPACE/NAME, so tests run in a copy laid out there.
COLLECTION := $(CURDIR)/.build/ansible_collections/ecrkit/images
TEST_PYTHON := 3.11
export PATH := $(BIN):$(PATH)

.PHONY: venv layout test sanity units integration demo clean

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

demo: layout
	cd "$(COLLECTION)" && scripts/with-emulator.sh $(BIN)/python scripts/demo.py

clean:
	rm -rf .build tests/output
