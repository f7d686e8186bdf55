# Shortcuts for the commands the README documents.
.PHONY: demo test lint format bench inspect

demo:
	python -m bertpool_fast demo

test:
	python -m pytest

lint:
	ruff check . && ruff format --check .

format:
	ruff check --fix . && ruff format .

# Timed benchmark; on a GPU machine prefer bench/run_gpu.sh, which also writes the report.
bench:
	python -m pytest bench --benchmark-enable

inspect:
	python -m bertpool_fast inspect --strict
