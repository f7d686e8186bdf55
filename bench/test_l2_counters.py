"""``python -m bench.l2_counters``: the launch step's code on CPU (``--dry-run``, interpreter), and
the table made from a report in the shape ``ncu --csv --page raw --print-units base`` writes.
The counters themselves need a GPU and Nsight Compute (``bench/run_gpu.sh``)."""

from __future__ import annotations

import zlib

import pytest
import torch

from bench import l2_counters


@pytest.fixture(autouse=True)
def _seed(request):
    seed = zlib.crc32(request.node.nodeid.encode())
    torch.manual_seed(seed)
    print(f"torch seed {seed}")


def test_dry_run_launches_and_checks_every_case(capsys):
    assert l2_counters.main(["--launch", "--dry-run"]) == 0
    assert f"launched {len(l2_counters.CASES)} cases" in capsys.readouterr().out


def test_a_wrong_kernel_is_not_profiled(monkeypatch, capsys):
    from bertpool_fast.kernels import pooler

    monkeypatch.setattr(pooler, "pooler_fwd", lambda *a, out, **k: out.zero_())
    assert l2_counters.main(["--launch", "--dry-run"]) == 1
    assert "rel err" in capsys.readouterr().err


def _report(rows: list[list[str]], metrics=l2_counters.METRICS, noise=True) -> str:
    header = ["ID", "Kernel Name", "Grid Size", *metrics]
    units = ["", "", "", *["" for _ in metrics]]
    lines = ["==PROF== Connected to process 1 (python3)"] if noise else []
    for row in (header, units, *rows):
        lines.append(",".join(f'"{cell}"' for cell in row))
    return "\n".join(lines) + "\n"


def _row(i: int, kernel: str, ns: float, nbytes: float, pct: float, extra=("5,120", "1.7e9",
                                                                            "61.0", "12.5")):  # fmt: skip
    return [str(i), kernel, "(6, 128, 1)", f"{ns:,.0f}", f"{nbytes:,.0f}", str(pct), "40.0", *extra]


def test_the_table_pairs_each_case_with_its_launch_in_order(tmp_path):
    cases = l2_counters.CASES
    rows = [_row(i, f"kernel_{i}", 10_000.0 * (i + 1), 90e6 * (i + 1), 80.0 + i)
            for i in range(len(cases))]  # fmt: skip
    path = tmp_path / "ncu.csv"
    path.write_text(_report(rows))
    assert l2_counters.main(["--summarize", str(path), "--out", str(tmp_path)]) == 0
    lines = (tmp_path / "l2_counters.md").read_text().splitlines()
    table = [line for line in lines if line.startswith("| ") and "kernel_" in line]
    assert len(table) == len(cases)
    name, m, fields = cases[2]  # the 64x128 tile at M = 8192: 768 tiles of (64 + 128) rows
    cells = [c.strip() for c in table[2].split("|")[1:-1]]
    assert cells[:3] == [name, str(m), "kernel_2"]
    assert cells[3] == "30.00"  # us
    assert cells[4] == "270.0"  # MB read, thousands separators and all
    assert cells[5] == f"{768 * 192 * 768 * 2 * 1e-6:.1f}"  # the model's bytes
    assert cells[6] == "9.00"  # 270 MB in 30 us
    assert cells[7] == "82.0"
    assert cells[8] == f"{5120 * 1.7e9 * 1e-12:.2f}"  # peak: bytes per cycle x cycles per second
    assert cells[9:] == ["40.0", "61.0", "12.5"]
    mm = [c.strip() for c in table[-1].split("|")[1:-1]]
    assert mm[0] == "cuBLAS mm" and mm[5] == "-"  # no tile model for cuBLAS
    assert "not the" not in "\n".join(lines)


def test_the_basic_metrics_alone_still_make_a_table(tmp_path):
    rows = [_row(i, "k", 1000.0, 1e6, 50.0, extra=())[:-1] + ["7.0"] for i in range(6)]
    path = tmp_path / "ncu.csv"
    path.write_text(_report(rows, metrics=l2_counters.BASIC_METRICS, noise=False))
    text = l2_counters.summarize(l2_counters.read_raw_csv(str(path)))
    first = [c.strip() for c in text.splitlines()[-6].split("|")[1:-1]]
    modelled = l2_counters.model_bytes(4096, l2_counters.CASES[0][2]) * 1e-6
    assert first[3:9] == ["1.00", "1.0", f"{modelled:.1f}", "1.00", "50.0", "-"]
    assert first[9:] == ["7.0", "-", "-"]


def test_a_report_with_other_launches_says_so(tmp_path):
    path = tmp_path / "ncu.csv"
    path.write_text(_report([_row(0, "k", 1000.0, 1e6, 50.0)]))
    assert "holds 1 profiled launches, not the 6 cases" in l2_counters.summarize(
        l2_counters.read_raw_csv(str(path)))  # fmt: skip


def test_no_kernel_rows_is_an_error(tmp_path, capsys):
    path = tmp_path / "ncu.csv"
    path.write_text("==ERROR== Failed to find metric\n")
    assert l2_counters.main(["--summarize", str(path), "--out", str(tmp_path)]) == 1
    assert "no profiled kernel rows" in capsys.readouterr().err


def test_metric_lists_for_ncu(capsys):
    assert l2_counters.main(["--metrics", "basic"]) == 0
    basic = capsys.readouterr().out.strip().split(",")
    assert l2_counters.main(["--metrics", "all"]) == 0
    full = capsys.readouterr().out.strip().split(",")
    assert basic == list(l2_counters.BASIC_METRICS) and full[: len(basic)] == basic
    assert len(full) == len(set(full)) == len(l2_counters.METRICS)
