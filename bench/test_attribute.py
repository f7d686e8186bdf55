"""``python -m bench.attribute``: its code path on CPU (``--dry-run``, interpreter). Every line must
be computed, checked against its own float64 reference and reported; the timings need a GPU."""

from __future__ import annotations

import json
import os

import pytest
import torch

from bench import attribute


def test_dry_run_checks_and_reports_every_line(tmp_path):
    out = tmp_path / "a"
    assert attribute.main(["--dry-run", "--dtypes", "fp16,bf16", "--out", str(out)]) == 0
    result = json.loads((out / "attribute.json").read_text())
    assert result["dry_run"]
    names = {x["name"] for x in result["lines"]}
    assert {"fused, shipped", "fused, exp-form tanh", "fused, identity", "fused, identity, no bias",
            "fused, contiguous rows", "cuBLAS linear + tanh", "cuBLAS linear", "cuBLAS mm",
            "tanh alone"} <= names  # fmt: skip
    for line in result["lines"]:
        assert line["status"] == "ok", line
        assert 0 <= line["rel_err"] <= 2 * 2.0**-8, line  # checked, and within two roundings
        assert line["median_us"] > 0
    eager = [x for x in result["lines"] if x["name"] == "cuBLAS linear + tanh"]
    assert len(eager) == 2 and all(x["to_eager"] == 1.0 for x in eager)  # one per dtype
    assert "| fp16 | 33 | fused, identity |" in (out / "attribute.md").read_text()


def test_a_wrong_line_is_reported_and_fails_the_run(tmp_path, monkeypatch):
    # a line whose output differs from its reference must say WRONG and make the exit code 1
    real = attribute.lines_for

    def with_a_wrong_line(m, dtype, arch, sets):
        lines = real(m, dtype, arch, sets)
        name, label, call, reference, nbytes, flops = lines[0]
        return [(name, label, call, lambda i: reference(i) + 1.0, nbytes, flops), *lines[1:]]

    monkeypatch.setattr(attribute, "lines_for", with_a_wrong_line)
    out = tmp_path / "a"
    assert attribute.main(["--dry-run", "--out", str(out)]) == 1
    lines = json.loads((out / "attribute.json").read_text())["lines"]
    assert lines[0]["status"].startswith("WRONG") and lines[0]["median_us"] is None
    assert all(x["status"] == "ok" for x in lines[1:])


@pytest.mark.skipif(
    torch.cuda.is_available(),
    reason="checks the refusal on a machine without a GPU; with one, the real run is run_gpu.sh's",
)
def test_refuses_a_real_run_without_a_gpu(capsys):
    assert attribute.main(["--out", os.devnull]) == 2
    assert "--dry-run" in capsys.readouterr().err
