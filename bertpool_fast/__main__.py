"""Command line: ``python -m bertpool_fast demo`` (the default) and ``python -m bertpool_fast inspect``."""

from __future__ import annotations

import argparse
import os
import sys


def _use_interpreter_without_gpu() -> None:
    # With no GPU the demo still runs the real Triton kernel, through Triton's CPU interpreter;
    # the switch must be set before triton is first imported.
    if "triton" in sys.modules or "TRITON_INTERPRET" in os.environ:
        return
    import torch

    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bertpool_fast")
    sub = parser.add_subparsers(dest="command")
    demo = sub.add_parser("demo", help="eager vs fused pooler_output on one sentence (default)")
    demo.add_argument("--random", action="store_true", help="ignore an installed checkpoint")
    sub.add_parser(
        "inspect",
        help="compile every kernel config for a GPU target, no GPU needed",
        add_help=False,
    )
    args, rest = parser.parse_known_args(argv)
    command = args.command or "demo"
    if command == "demo":
        _use_interpreter_without_gpu()
        from .demo import run_demo

        return run_demo(use_checkpoint=not getattr(args, "random", False))
    if command == "inspect":
        from .inspect_kernels import main as inspect_main

        return inspect_main(rest)
    parser.error(f"unknown command {command!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
