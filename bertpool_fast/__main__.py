"""Command line: ``python -m bertpool_fast demo`` (the default) and ``python -m bertpool_fast inspect``.

The same entry point is installed as the ``bertpool-fast`` console script.
"""

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


def _prog() -> str:
    # Usage lines name the command the user typed: `python -m bertpool_fast` runs this file as
    # __main__.py, the console script runs as `bertpool-fast`.
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return "python -m bertpool_fast" if name in ("", "__main__.py", "-c") else name


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    prog = _prog()
    if argv[:1] == ["inspect"]:
        # inspect has its own parser (and --help); hand it everything after the command
        from .inspect_kernels import main as inspect_main

        return inspect_main(argv[1:], prog=f"{prog} inspect")
    parser = argparse.ArgumentParser(prog=prog)
    sub = parser.add_subparsers(dest="command")
    demo = sub.add_parser("demo", help="eager vs fused pooler_output on one sentence (default)")
    demo.add_argument("--random", action="store_true", help="ignore an installed checkpoint")
    sub.add_parser("inspect", help="compile every kernel config for a GPU target, no GPU needed")
    # parse_args, not parse_known_args: a mistyped option (--randon) is an error, not ignored
    args = parser.parse_args(argv)
    _use_interpreter_without_gpu()
    from .demo import run_demo

    return run_demo(use_checkpoint=not getattr(args, "random", False))


if __name__ == "__main__":
    sys.exit(main())
