"""A built wheel, installed without the source tree, carries and runs the kernels."""

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CHECK = r"""
import os, sys
import bertpool_fast, bertpool_fast.kernels as k
assert "site-packages" in bertpool_fast.__file__, bertpool_fast.__file__
assert "site-packages" in k.__file__, k.__file__
import torch
h = torch.randn(2, 3, 40); w = torch.randn(24, 40); b = torch.randn(24)
y = bertpool_fast.fused_pooler(h, w, b, backend="triton")
ref = torch.tanh(h[:, 0].double() @ w.double().t() + b.double())
err = ((y.double() - ref).norm() / ref.norm()).item()
assert err < 2e-5, err
print("kernel from", k.__file__, "rel err", err)
"""


@pytest.mark.slow
def test_wheel_install_runs_the_kernel(tmp_path):
    wheel_dir = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(wheel_dir),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    (wheel,) = wheel_dir.glob("bertpool_fast-*.whl")
    env_dir = tmp_path / "venv"
    # The venv sees this interpreter's torch/triton/transformers but not the source tree.
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", str(wheel)],
        check=True,
        capture_output=True,
        text=True,
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TRITON_INTERPRET"] = "1"
    result = subprocess.run(
        [str(python), "-c", CHECK], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "kernel from" in result.stdout
