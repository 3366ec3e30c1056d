#!/usr/bin/env python3
"""Start Triton on a model repository in the foreground (`make serve`); Ctrl-C stops it cleanly.

Uses the embedded tritonserver from the nvidia-pytriton wheel unless TRITONSERVER points at another one.
Triton itself prints the model table (READY/UNAVAILABLE per model) once loading is done.
"""
import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from yolo_triton.server import find_triton, server_command  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("extra", nargs="*", help="more tritonserver flags, after --")
    args = parser.parse_args()
    install = find_triton()
    command = server_command(install, args.repository, args.http_port, args.grpc_port, args.metrics_port, args.extra)
    print("+ " + " ".join(command), flush=True)
    os.execve(command[0], command, install.env())  # Triton becomes this process: Ctrl-C reaches it directly


if __name__ == "__main__":
    main()
