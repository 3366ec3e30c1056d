#!/usr/bin/env python3
"""Start Triton on a model repository in the foreground (`make serve`); Ctrl-C stops it cleanly.

Uses the embedded tritonserver from the nvidia-pytriton wheel unless TRITONSERVER points at another one.
Triton itself prints the model table (READY/UNAVAILABLE per model) once loading is done.
Plugin libraries (declared by a detector's config.pbtxt, or --plugin) must exist; they are preloaded
(LD_PRELOAD) or passed to the TensorRT backend (--plugin-mode backend-config).
"""
import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from yolo_triton.repository import RUNTIMES  # noqa: E402
from yolo_triton.server import PLUGIN_MODES, PluginNotFound, declared_plugins, find_triton, plugin_launch, server_command  # noqa: E402


def serve_in_docker(args, plugins) -> None:
    """RUNTIME=tensorrt without a local TensorRT-enabled tritonserver: our image on NGC Triton, in docker."""
    import subprocess

    from yolo_triton import deploy

    why_not = deploy.docker_status()
    if why_not:
        raise SystemExit(
            f"serve RUNTIME=tensorrt: {why_not}.\nServe the plans with docker and the NVIDIA Container Toolkit, or set "
            "TRITONSERVER (and TRITON_BACKENDS) to a tritonserver that has the TensorRT backend. "
            "`make serve` (RUNTIME=onnxruntime) serves on the CPU without either."
        )
    image, build = deploy.server_image()
    print("+ " + " ".join(build), flush=True)
    if subprocess.run(build).returncode != 0:
        raise SystemExit("serve: building the server image failed")
    command = deploy.docker_serve_command(args.repository, image, args.http_port, args.grpc_port, args.metrics_port,
                                          plugins, args.plugin_mode) + list(args.extra)
    print("+ " + " ".join(command), flush=True)
    os.execvp(command[0], command)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--plugin", type=Path, action="append", default=[], help="plugin library to load (repeatable)")
    parser.add_argument("--plugin-mode", choices=PLUGIN_MODES, default="preload")
    parser.add_argument("--runtime", choices=RUNTIMES, default="onnxruntime",
                        help="tensorrt: the NGC Triton image in docker, unless TRITONSERVER names a server with TensorRT")
    parser.add_argument("extra", nargs="*", help="more tritonserver flags, after --")
    args = parser.parse_args()
    plugins = [*declared_plugins(args.repository), *args.plugin]
    try:
        plugin_env, plugin_flags = plugin_launch(plugins, args.plugin_mode)
    except PluginNotFound as error:
        raise SystemExit(f"serve: {error}") from None
    if args.runtime == "tensorrt" and not os.environ.get("TRITONSERVER"):
        serve_in_docker(args, plugins)
    install = find_triton()
    command = server_command(install, args.repository, args.http_port, args.grpc_port, args.metrics_port,
                             [*plugin_flags, *args.extra])
    env = {**install.env(), **plugin_env}
    print("+ " + " ".join(f"{k}={v}" for k, v in plugin_env.items()) + (" " if plugin_env else "") + " ".join(command), flush=True)
    os.execve(command[0], command, env)  # Triton becomes this process: Ctrl-C reaches it directly


if __name__ == "__main__":
    main()
