# Shortcuts for the commands the README documents.
.PHONY: demo test lint format bench inspect ci

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

# What CI runs: the README's commands in fresh virtualenvs, and the GPU machines' version set.
ci:
	bash .ci/run
