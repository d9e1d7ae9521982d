# The two set-up commands on a fresh machine are `make demo` and `make test`;
# each creates .venv when missing and installs the project into it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test soak lint bench bench-full clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check \
		--config-settings editable_mode=compat -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/demo.sh

# Lint, types (mypy --strict, [tool.mypy]), the import contracts ([tool.importlinter]:
# the planner cannot do I/O), then the tests.
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

# Long chaos: random edits, faults and restarts with the daemon running, and SIGKILLs
# in the middle of large applies, over many seeds (figures in docs/security.md).
# Both kinds of node: at least 10,000 chaos operations (250 sequences shared between
# snarkOS and Agave, averaging about 42 of their 50 steps; the total is counted and
# printed) and 2,000 SIGKILLs (10 seeds x 50 rounds x 2 modes x 2 kinds).
soak: $(STAMP)
	rm -f .soak-operations
	SLIPSTREAM_CHAOS_EXAMPLES=250 SLIPSTREAM_CHAOS_STEPS=50 \
	SLIPSTREAM_CHAOS_COUNT_FILE=.soak-operations \
		$(BIN)/python -m pytest -q -p no:cacheprovider tests/test_chaos.py
	awk '{ n += $$1 } END { print "chaos operations run:", n }' .soak-operations
	rm -f .soak-operations
	for seed in 1 2 3 4 5 6 7 8 9 10; do \
		SLIPSTREAM_CRASH_SEED=$$seed SLIPSTREAM_CRASH_ROUNDS=50 \
			$(BIN)/python -m pytest -q -p no:cacheprovider tests/test_crash.py || exit 1; \
	done

# Benchmarks print figures and ratios against baselines measured in the same run
# (docs/performance.md). bench: quick sizes, under 2 minutes; bench-full: the full sizes.
bench: $(STAMP)
	$(BIN)/python bench/run_all.py

bench-full: $(STAMP)
	$(BIN)/python bench/run_all.py --full

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis .mypy_cache .import_linter_cache
