"""bench/report.py's targets table and interleaved section, from records made up here."""

import json
import math

from bench import report


def _case(dtype, batch, contestant, gpu_us, wall_us=10.0, frac=0.5):
    return {"bench": "pooler_fwd", "dtype": dtype, "hidden": 768, "batch": batch, "seq": 128,
            "contestant": contestant, "gpu_us": gpu_us, "wall_us": wall_us, "floor_us": 1.0,
            "time_over_floor": gpu_us, "fraction_of_gemm_rate": frac}  # fmt: skip


def _rounds(dtype, batch, ratio, lo, hi, fused_us=7.0):
    return {"bench": "pooler_interleaved", "dtype": dtype, "hidden": 768, "batch": batch,
            "seq": 128, "contestant": "triton", "gpu_us": fused_us, "eager_gpu_us": fused_us / ratio,
            "fused_over_eager": ratio, "ratio_spread": [lo, hi], "rounds": 5,
            "wall_us": math.nan, "floor_us": 1.0, "time_over_floor": fused_us,
            "fraction_of_gemm_rate": 0.42}  # fmt: skip


def _row(lines, dtype, batch):
    return next(line for line in lines if line.startswith(f"| {dtype} | {batch} |"))


def test_targets_take_the_eager_ratio_from_the_rounds_where_they_ran():
    cases = [_case("fp16", 2048, "triton", 8.0, wall_us=8.0), _case("fp16", 2048, "eager", 10.0),
             _case("fp16", 512, "triton", 4.5), _case("fp16", 512, "eager", 7.5)]  # fmt: skip
    lines = report.targets(cases, [_rounds("fp16", 2048, 0.69, 0.66, 0.73)])
    cells = [c.strip() for c in _row(lines, "fp16", 2048).split("|")[3:-1]]
    assert cells[0] == "0.69 (0.66-0.73 in 5 rounds; met)"  # not the two cases' 0.80
    assert cells[1] == "not run"  # no max-autotune case: the rounds never stand in for it
    assert cells[3] == "0.80 (met)"  # wall time still from the cases
    # no rounds at 512: the ratio of the two cases, and a miss says by how much
    assert _row(lines, "fp16", 512).split("|")[3].strip() == "0.60 (met)"
    missed = report.targets(cases, [_rounds("fp16", 2048, 0.77, 0.75, 0.80)])
    assert "0.77 (0.75-0.80 in 5 rounds; MISSED by 10%)" in _row(missed, "fp16", 2048)


def test_rounds_alone_still_make_a_targets_row():
    lines = report.targets([], [_rounds("bf16", 4096, 0.8, 0.78, 0.83, fused_us=11.0)])
    cells = [c.strip() for c in _row(lines, "bf16", 4096).split("|")[3:-1]]
    assert cells[0].startswith("0.80 (0.78-0.83 in 5 rounds; MISSED")
    assert cells[2].startswith("0.42") and cells[3] == "not run"


def test_report_of_rounds_only(tmp_path):
    path = tmp_path / "records.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in
                            [_rounds("fp16", 8192, 0.86, 0.84, 0.90, fused_us=21.8)]))  # fmt: skip
    written = report.write_report(str(path))
    text = (tmp_path / "report.md").read_text()
    assert written[0].endswith("report.md")
    assert "## GPU time in interleaved rounds" in text
    assert (
        "| fp16 | 768 | 8192 | 25.35 | 21.80 | 0.86 (0.84-0.90 in 5 rounds; MISSED by 23%) |"
        in text
    )
    assert "## pooler_interleaved" not in text  # its own section, not the generic one


def test_a_miss_under_one_per_cent_is_not_written_as_zero():
    assert report._verdict(False, 0.598, 0.6, higher_is_better=True) == "MISSED by 0.3%"
    assert report._verdict(False, 0.77, 0.7) == "MISSED by 10%"
    assert report._verdict(True, 0.69, 0.7) == "met"
