"""The `gpu-check` subcommand of `canary-trt` (usage: the package doc). Light imports only: --help stays instant."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(commands) -> None:
    """Register `gpu-check prepare|run` on canary-trt's subparsers."""
    check = commands.add_parser(
        "gpu-check", help="self-check of the GPU flavour against ONNX Runtime (run it first on a GPU host)",
        description=_package_doc(), formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    stages = check.add_subparsers(dest="gpu_check_stage", required=True)

    prep = stages.add_parser("prepare", help="stage 1, CPU image (NeMo): random tiny checkpoint, builds, "
                             "ONNX Runtime references")  # fmt: skip
    prep.add_argument("--out", required=True, type=Path, help="the check folder (DIR)")
    prep.add_argument("--preset", default="h100",
                      help="GPU preset of the build: rtx5090, rtx-pro-6000, l40s, a100, h100 (default h100)")  # fmt: skip
    prep.add_argument("--seed", type=int, default=0, help="random checkpoint seed (default 0)")
    prep.add_argument("--max-new-tokens", type=int, help="tokens compared per clip (default 24)")
    prep.set_defaults(run=_prepare)

    run = stages.add_parser("run", help="stage 2, GPU image: versions, engines, tritonserver, comparisons; "
                            "exit 1 names the first failure")  # fmt: skip
    run.add_argument("directory", type=Path, metavar="DIR", help="a folder written by `gpu-check prepare`")
    run.add_argument("--url", help="compare against this running server's HTTP endpoint (HOST:PORT, e.g. "
                     "127.0.0.1:8000) instead of building engines and starting one")  # fmt: skip
    run.add_argument("--tritonserver", help="the tritonserver binary (default: on PATH, else "
                     "/opt/tritonserver/bin/tritonserver)")  # fmt: skip
    run.add_argument("--skip-engines", action="store_true", help="reuse the engines an earlier run built in DIR/gpu")
    run.add_argument("--exact", action="store_true", default=None,
                     help="require identical tokens even from an FP16 decoder (default: by the server's decoder)")
    run.add_argument("--ready-timeout", type=float, help="seconds for the server to load every model (default 900)")
    run.set_defaults(run=_run)


def _package_doc() -> str:
    from . import __doc__ as doc

    return doc or ""


def _prepare(args) -> int:
    from .prepare import MAX_NEW_TOKENS, prepare

    prepare(args.out, args.preset, args.seed, MAX_NEW_TOKENS if args.max_new_tokens is None else args.max_new_tokens)
    return 0


def _run(args) -> int:
    from .run import READY_TIMEOUT_S, run

    timeout = READY_TIMEOUT_S if args.ready_timeout is None else args.ready_timeout
    return run(args.directory, args.url, args.tritonserver, args.skip_engines, args.exact, timeout)
