#!/usr/bin/env python3
"""Start Triton on a model repository in the foreground (`make serve`); Ctrl-C stops it cleanly.

Uses the embedded tritonserver from the nvidia-pytriton wheel unless TRITONSERVER points at another one.
Triton itself prints the model table (READY/UNAVAILABLE per model) once loading is done.
Plugin libraries (declared by a detector's config.pbtxt, or --plugin) must exist; they are preloaded
(LD_PRELOAD) or passed to the TensorRT backend (--plugin-mode backend-config).

--profile production (the default): the model-repository, shared-memory, trace and logging APIs answer only
requests with the header `admin-key: <TRITON_ADMIN_KEY, or the key in --admin-key-file>`; --profile open for
benchmarks on a trusted host. --tls-cert/--tls-key: TLS on gRPC, and HTTPS on --https-port in front of the HTTP
endpoint (which then listens on 127.0.0.1 only); --tls-client-ca makes both mutual. See yolo_triton/security.py.

Triton runs as a child of this script, which passes Ctrl-C/SIGTERM on, and stops it with exit code 3 when a
Python backend stub dies (Triton 2.51 would keep the model READY and fail that instance's requests forever).
"""
import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from yolo_triton import security  # noqa: E402
from yolo_triton.mps import MPSDaemon, MPSUnavailable  # noqa: E402
from yolo_triton.repository import RUNTIMES  # noqa: E402
from yolo_triton.server import (PLUGIN_MODES, PluginNotFound, cuda_pool_flags, declared_plugins, find_triton,  # noqa: E402
                                plugin_launch, server_command, visible_gpu_count)
from yolo_triton.supervise import supervise  # noqa: E402


def serve_in_docker(args, plugins, secure_flags, shown_flags) -> None:
    """RUNTIME=tensorrt without a local TensorRT-enabled tritonserver: our image on NGC Triton, in docker."""
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
                                          plugins, args.plugin_mode)
    print("+ " + " ".join([*command, *shown_flags, *args.extra]), flush=True)
    command += [*secure_flags, *args.extra]
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
    parser.add_argument("--profile", choices=security.PROFILES, default="production",
                        help="production: admin APIs need the admin-key header; open: nothing restricted")
    parser.add_argument("--admin-key-file", type=Path, default=Path("build/admin-key"),
                        help=f"the admin key when {security.ADMIN_KEY_ENV} is unset (made, mode 0600, if missing)")
    parser.add_argument("--tls-cert", type=Path, help="server certificate (PEM): TLS on gRPC, HTTPS on --https-port")
    parser.add_argument("--tls-key", type=Path, help="server private key (PEM)")
    parser.add_argument("--tls-client-ca", type=Path, help="CA of client certificates: mutual TLS on gRPC and HTTPS")
    parser.add_argument("--https-port", type=int, default=8443)
    parser.add_argument("--on-stub-death", choices=("exit", "ignore"), default="exit",
                        help="a Python backend stub that dies: stop the server loudly (exit 3), or leave it be")
    parser.add_argument("--cuda-pool-mib", type=int, default=0,
                        help="Triton's CUDA memory pool on every visible GPU (GPU tensors between ensemble steps)")
    parser.add_argument("--mps", choices=("on", "off", "auto", "1", "0"), default="off",
                        help="run the server's CUDA contexts under a private CUDA MPS daemon (yolo_triton/mps.py): "
                             "on (stop if it cannot start), auto (on where a GPU and the daemon are, else off, said "
                             "why), off")
    parser.add_argument("extra", nargs="*", help="more tritonserver flags, after --")
    args = parser.parse_args()
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    plugins = [*declared_plugins(args.repository), *args.plugin]
    try:
        plugin_env, plugin_flags = plugin_launch(plugins, args.plugin_mode)
    except PluginNotFound as error:
        raise SystemExit(f"serve: {error}") from None
    try:
        secure_flags, shown_flags = security_flags(args)
    except (OSError, ValueError) as error:
        raise SystemExit(f"serve: {error}") from None
    if args.runtime == "tensorrt" and not os.environ.get("TRITONSERVER"):
        if args.tls_cert:
            raise SystemExit("serve: --tls-cert with the docker server is not supported: terminate TLS in front of it")
        serve_in_docker(args, plugins, secure_flags, shown_flags)
    install = find_triton()
    pool_flags = cuda_pool_flags(args.cuda_pool_mib) if args.cuda_pool_mib else []
    command = server_command(install, args.repository, args.http_port, args.grpc_port, args.metrics_port,
                             [*plugin_flags, *pool_flags, *secure_flags, *args.extra])
    shown = server_command(install, args.repository, args.http_port, args.grpc_port, args.metrics_port,
                           [*plugin_flags, *pool_flags, *shown_flags, *args.extra])
    env = {**install.env(), **plugin_env}
    print("+ " + " ".join(f"{k}={v}" for k, v in plugin_env.items()) + (" " if plugin_env else "") + " ".join(shown), flush=True)
    # until supervise installs its own handlers, a SIGTERM/SIGHUP still unwinds through the finally below, so the
    # MPS daemon never outlives serve (SIGKILL aside)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda number, _frame: sys.exit(128 + number))
    daemon = None
    try:
        daemon = start_mps({"1": "on", "0": "off"}.get(args.mps, args.mps))
        code = supervise_with_tls(command, {**env, **daemon.env()} if daemon else env, args)
    finally:
        if daemon:
            daemon.stop()
    sys.exit(code)


def start_mps(mode: str):
    """The private MPS daemon for ``--mps on|auto``, or None. ``on`` stops serve where it cannot start; ``auto``
    uses it where this host has a GPU and the daemon, and otherwise serves without it, saying why."""
    if mode == "off":
        return None
    if mode == "auto" and not visible_gpu_count():
        return None  # a CPU host: nothing to share
    try:
        daemon = MPSDaemon().start()
    except MPSUnavailable as error:
        if mode == "on":
            raise SystemExit(f"serve: {error}") from None
        print(f"serve: MPS=auto: serving without MPS: {error}", flush=True)
        return None
    print(f"serve: CUDA MPS daemon on ({daemon.env()['CUDA_MPS_PIPE_DIRECTORY']}); MPS=0 serves without it", flush=True)
    return daemon


def security_flags(args):
    """The profile's tritonserver flags, and the same with the admin key masked (for printing)."""
    flags, shown = [], []
    if args.profile == "production":
        key, source = security.admin_key(args.admin_key_file)
        flags += security.restricted_flags(key)
        shown += security.restricted_flags("****")
        print(f"serve: production profile: {', '.join(security.RESTRICTED_APIS)} APIs need the header "
              f"'{security.ADMIN_HEADER}: <key from {source}>' (--profile open lifts this)", flush=True)
    if args.tls_cert:
        tls = security.grpc_tls_flags(args.tls_cert, args.tls_key, args.tls_client_ca)
        # Triton's HTTP endpoint has no TLS: plain HTTP stays on this host, HTTPS is the terminator's port
        flags += [*tls, "--http-address=127.0.0.1"]
        shown += [*tls, "--http-address=127.0.0.1"]
    return flags, shown


def supervise_with_tls(command, env, args) -> int:
    """Triton under yolo_triton.supervise (signals passed on, a dead stub stops it with exit 3); with --tls-cert,
    HTTPS terminated here for as long as it runs."""
    terminator = None
    if args.tls_cert:
        context = security.server_tls_context(args.tls_cert, args.tls_key, args.tls_client_ca)
        terminator = security.TLSTerminator(("0.0.0.0", args.https_port), ("127.0.0.1", args.http_port), context).start()
        print(f"serve: HTTPS on port {args.https_port} -> HTTP 127.0.0.1:{args.http_port}"
              + (" (client certificates required)" if args.tls_client_ca else ""), flush=True)
    try:
        return supervise(command, env, args.http_port, watch=args.on_stub_death == "exit")
    finally:
        if terminator:
            terminator.stop()


if __name__ == "__main__":
    main()
