"""Benchmark session setup: interpreter switch, provenance stamp, one calibration per run, budget.

``pytest bench --benchmark-disable`` (CI) runs every benchmark once, untimed, on a tiny subset of
cases: the code paths are exercised and each contestant's output is checked against eager.
``pytest bench --benchmark-enable`` times them; on a CPU only the torch-side contestants are timed,
and the summary says that kernel figures need a GPU.
"""

import dataclasses
import json
import os
import sys

import torch

if "triton" not in sys.modules and not torch.cuda.is_available():
    # As in tests/conftest.py: on CPU the Triton kernel can only run through the interpreter,
    # which must be switched on before triton is first imported.
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from bench import harness  # noqa: E402

RESULTS_KEY = pytest.StashKey[list]()
CALIBRATION_KEY = pytest.StashKey[dict]()


def benchmark_enabled(config) -> bool:
    """pytest-benchmark's own verdict (--benchmark-enable overrides a --benchmark-disable in addopts)."""
    session = getattr(config, "_benchmarksession", None)
    if session is not None:
        return not (session.disabled or session.skip)
    return config.getoption("benchmark_enable", False) or not config.getoption(
        "benchmark_disable", False
    )


@pytest.fixture(scope="session")
def bench_env() -> dict:
    return harness.environment()


@pytest.fixture(scope="session")
def budget() -> harness.Budget:
    return harness.Budget.from_env()


@pytest.fixture(scope="session")
def calibration(request) -> harness.Calibration:
    """Copy bandwidth and GEMM rates, measured once per run (tiny and meaningless when disabled)."""
    smoke = not benchmark_enabled(request.config)
    cal = harness.calibrate(list(harness.DTYPE_NAMES), smoke=smoke)
    request.config.stash[CALIBRATION_KEY] = dataclasses.asdict(cal)
    records_path = os.environ.get("BENCH_RECORDS")
    if records_path:
        with open(os.path.join(os.path.dirname(records_path) or ".", "calibration.json"), "w") as f:
            json.dump(dataclasses.asdict(cal), f, indent=1)
    return cal


class StreamedRecords(list):
    """A list of records that also appends each one, as a JSON line, to ``path`` when it arrives.

    pytest-benchmark writes its JSON only when the session ends; a run cut short by a timeout
    would leave nothing. ``BENCH_RECORDS=<file>.jsonl`` keeps every finished case on disk, and
    ``python -m bench.report <file>.jsonl`` reports from it.
    """

    def __init__(self, path: str | None):
        super().__init__()
        self.path = path

    def append(self, record: dict) -> None:
        super().append(record)
        if self.path:
            with open(self.path, "a") as f:
                f.write(json.dumps(record, default=str) + "\n")


@pytest.fixture(scope="session")
def bench_results(request) -> list:
    """Every timed case's record; printed in the terminal summary (and streamed, see above)."""
    if RESULTS_KEY not in request.config.stash:
        request.config.stash[RESULTS_KEY] = StreamedRecords(os.environ.get("BENCH_RECORDS"))
    return request.config.stash[RESULTS_KEY]


def pytest_benchmark_update_machine_info(config, machine_info):
    # Stamp pytest-benchmark's JSON with what the report needs to say where figures come from.
    machine_info["bertpool_fast"] = harness.environment()
    cal = config.stash.get(CALIBRATION_KEY, None)
    if cal is not None:
        machine_info["bertpool_fast_calibration"] = cal


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    records = config.stash.get(RESULTS_KEY, [])
    if not records and harness.HAS_CUDA:
        return
    from bench import report

    tr = terminalreporter
    tr.section("bertpool_fast benchmark")
    if not benchmark_enabled(config):
        tr.write_line(
            "benchmark disabled: every case ran once, untimed, after checking its output "
            "against eager (use --benchmark-enable to time)"
        )
    if not harness.HAS_CUDA:
        tr.write_line(report.CPU_NOTICE)
    if records:
        tr.write_line(report.summary_table(records))
