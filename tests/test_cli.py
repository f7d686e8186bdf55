"""The command line: options are checked, usage names the command typed, inspect sums up."""

import sys

import pytest

from bertpool_fast.__main__ import main
from bertpool_fast.inspect_kernels import InspectResult, summary


def test_mistyped_option_is_an_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["demo", "--randon"])
    assert exit_.value.code == 2
    assert "unrecognized arguments: --randon" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv0, prog",
    [
        ("/venv/bin/bertpool-fast", "bertpool-fast"),
        ("/x/bertpool_fast/__main__.py", "python -m bertpool_fast"),
    ],
    ids=["console-script", "python-m"],
)
@pytest.mark.parametrize("command", [[], ["inspect"]], ids=["top", "inspect"])
def test_usage_names_the_command_typed(monkeypatch, capsys, argv0, prog, command):
    monkeypatch.setattr(sys, "argv", [argv0, *command, "--help"])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: {' '.join([prog, *command])} ")


def _result(name, **readings):
    base = dict(arch="sm_90", dtype="fp16", num_warps=4, num_stages=3, expects_tensor_cores=True)
    return InspectResult(name=name, **base, **readings)


def test_inspect_summary_counts_spills_failures_and_missing_tensor_cores():
    clean = dict(registers=96, spill_stores=0, spill_loads=0, tensor_cores="wgmma")
    results = [
        _result("a", **clean),
        _result("b", **{**clean, "spill_stores": 8, "spill_loads": 4}),
        _result("c", **{**clean, "tensor_cores": ""}),
        _result("d", error="CompilationError: boom"),
    ]
    assert summary(results) == (
        "1 spill in 4 configs (1 failed to compile, "
        "1 without the tensor-core instructions they need)"
    )
    assert summary(results[:1]).startswith("0 spills in 1 configs")
