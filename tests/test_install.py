"""A built wheel, installed without the source tree, carries and runs the kernels."""

import importlib.util
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
# from this venv's own site-packages, files not links into the checkout
for f in (bertpool_fast.__file__, os.path.realpath(k.__file__)):
    assert f.startswith(sys.prefix) and "site-packages" in f, f
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
    # Build with this interpreter's setuptools when it has one (offline, fast); an interpreter
    # without it (a bare venv on Python 3.12+) builds in isolation like any other pip install.
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            *isolation,
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
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", str(wheel)],
        check=True,
        capture_output=True,
        text=True,
    )
    # Now the new venv must see this interpreter's torch/triton/transformers, wherever they live:
    # the base interpreter's site-packages or a virtualenv's (system_site_packages=True would miss
    # a virtualenv's). Not before the install: pip would find a bertpool_fast there and skip the
    # wheel. A .pth line appends a path after the venv's own site-packages and runs none of the
    # .pth files there, so an editable install of the checkout in this interpreter stays invisible.
    site_dirs = [p for p in sys.path if os.path.basename(p) in ("site-packages", "dist-packages")]
    own_site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(own_site, "_outer_site.pth").write_text("\n".join(site_dirs) + "\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TRITON_INTERPRET"] = "1"
    result = subprocess.run(
        [str(python), "-c", CHECK], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "kernel from" in result.stdout
