# The inner loop: `make style` (fix), `make quality` (check, as CI does), `make test-fast`.
.PHONY: quality style test test-fast

# Lint, formatting and the type check; no file is changed (CI runs this, see .ci/run).
quality:
	ruff check .
	ruff format --check .
	python -m mypy

# Fix what ruff can fix and format the tree.
style:
	ruff check --fix .
	ruff format .

# The README's test command: the whole suite, doctests included (settings in pyproject.toml).
test:
	python -m pytest -n 2

# Everything but the end-to-end runs of the examples and long training.
test-fast:
	python -m pytest -m "not slow"
