#!/usr/bin/env python3
"""`make serve`: Triton on the model repository, in the foreground; Ctrl-C stops it cleanly.

    python -m yolo_triton.serving.serve [--device cpu|gpu] [--models yolov7 yolov4] [--profile production] ...

Loads the ensembles of ``--models`` by name (Triton's explicit model control; each ensemble brings its steps), so a
stray folder in the repository cannot stop the server. ``--device`` picks the preset of yolo_triton/placement.py
(MPS and Triton's CUDA memory pool on a GPU); ``--mps``/``--cuda-pool-mib`` change one field of it.
Uses the embedded tritonserver from the nvidia-pytriton wheel unless TRITONSERVER points at another one; with
``--runtime tensorrt`` and no TRITONSERVER, NGC's Triton in docker. Triton prints its model table once loading is
done. Plugin libraries (declared by a detector's config.pbtxt, or --plugin) must exist; they are preloaded
(LD_PRELOAD) or passed to the TensorRT backend (--plugin-mode backend-config).

--profile production (the default): the model-repository, shared-memory, trace and logging APIs answer only
requests with the header `admin-key: <TRITON_ADMIN_KEY, or the key in --admin-key-file>`; --profile open for
benchmarks on a trusted host. --tls-cert/--tls-key: TLS on gRPC, and HTTPS on --https-port in front of the HTTP
endpoint (which then listens on 127.0.0.1 only); --tls-client-ca makes both mutual (yolo_triton/serving/security.py).

Triton runs as a child of this script, which passes Ctrl-C/SIGTERM on, and stops it with exit code 3 when a
Python backend stub dies (Triton 2.51 would keep the model READY and fail that instance's requests forever).
"""
import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .. import errors
from ..placement import DEVICES, MPS_MODES, PRESETS, RUNTIMES
from ..repository import CPU_TWIN_SUFFIX
from ..specs import DEFAULT_MODELS
from . import security
from .mps import MPSDaemon, MPSUnavailable
from .supervise import supervise
from .triton import (PLUGIN_MODES, PluginNotFound, cuda_pool_flags, declared_plugins, find_triton, plugin_launch,
                     server_command, visible_gpu_count)


PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}  # Triton's own defaults, kept by deploy/k8s too


def load_flags(repository: Path, models) -> list:
    """Triton's explicit model control, loading the ensembles of ``models`` (and their CPU twins where built)."""
    flags = ["--model-control-mode=explicit"]
    for model in models:
        ensemble = f"{model}_e2e"
        if not (repository / ensemble / "config.pbtxt").exists():
            raise SystemExit(f"serve: {repository} has no ensemble {ensemble}: build it first "
                             f"(make build-engines MODELS={model})")
        flags.append(f"--load-model={ensemble}")
        if (repository / (ensemble + CPU_TWIN_SUFFIX) / "config.pbtxt").exists():
            flags.append(f"--load-model={ensemble + CPU_TWIN_SUFFIX}")
    return flags


def serve_in_docker(args, plugins, secure_flags, shown_flags) -> None:
    """RUNTIME=tensorrt without a local TensorRT-enabled tritonserver: our image on NGC Triton, in docker."""
    from yolo_triton.serving import docker

    why_not = docker.docker_status()
    if why_not:
        raise SystemExit(
            f"serve RUNTIME=tensorrt: {why_not}.\nServe the plans with docker and the NVIDIA Container Toolkit, or set "
            "TRITONSERVER (and TRITON_BACKENDS) to a tritonserver that has the TensorRT backend. "
            "`make serve` (RUNTIME=onnxruntime) serves on the CPU without either."
        )
    image, build = docker.server_image()
    print("+ " + " ".join(build), flush=True)
    if subprocess.run(build).returncode != 0:
        raise SystemExit("serve: building the server image failed")
    command = docker.docker_serve_command(args.repository, image, args.http_port, args.grpc_port, args.metrics_port,
                                          plugins, args.plugin_mode)
    print("+ " + " ".join([*command, *shown_flags, *args.extra]), flush=True)
    command += [*secure_flags, *args.extra]
    os.execvp(command[0], command)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=DEVICES, default="cpu", help="the preset (yolo_triton/placement.py)")
    parser.add_argument("--runtime", choices=RUNTIMES,
                        help="the preset's unless given; tensorrt: NGC's Triton in docker, unless TRITONSERVER names "
                             "a server with TensorRT")
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="whose ensembles to load")
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    for protocol, port in PORTS.items():
        parser.add_argument(f"--{protocol}-port", type=int, default=port)
    parser.add_argument("--plugin", type=Path, action="append", default=[], help="plugin library to load (repeatable)")
    parser.add_argument("--plugin-mode", choices=PLUGIN_MODES, default="preload")
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
    parser.add_argument("--cuda-pool-mib", type=int,
                        help="Triton's CUDA memory pool on every visible GPU (GPU tensors between ensemble steps); "
                             "default: the preset's")
    parser.add_argument("--mps", choices=MPS_MODES,
                        help="the server's CUDA contexts under a private CUDA MPS daemon: on (stop if it cannot "
                             "start), auto (on where a GPU and the daemon are, else off, said why), off; default: the "
                             "preset's")
    parser.add_argument("extra", nargs="*", help="more tritonserver flags, after --")
    args = parser.parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    placement = PRESETS[args.device].replace(runtime=args.runtime, mps=args.mps, cuda_pool_mib=args.cuda_pool_mib)
    plugins = [*declared_plugins(args.repository), *args.plugin]
    try:
        plugin_env, plugin_flags = plugin_launch(plugins, args.plugin_mode)
    except PluginNotFound as error:
        raise SystemExit(f"serve: {error}") from None
    try:
        secure_flags, shown_flags = security_flags(args)
    except (OSError, ValueError) as error:
        raise SystemExit(f"serve: {error}") from None
    args.extra = [*load_flags(args.repository, args.models), *args.extra]
    if placement.runtime == "tensorrt" and not os.environ.get("TRITONSERVER"):
        if args.tls_cert:
            raise SystemExit("serve: --tls-cert with the docker server is not supported: terminate TLS in front of it")
        serve_in_docker(args, plugins, secure_flags, shown_flags)
    install = find_triton()
    pool_flags = cuda_pool_flags(placement.cuda_pool_mib) if placement.cuda_pool_mib else []
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
        daemon = start_mps(placement.mps)
        code = supervise_with_tls(command, {**env, **daemon.env()} if daemon else env, args)
    finally:
        if daemon:
            daemon.stop()
    return code


def start_mps(mode: str):
    """The private MPS daemon for ``--mps on|auto``, or None. ``on`` stops serve where it cannot start; ``auto``
    uses it where this host has a GPU and the daemon, and otherwise serves without it, saying why."""
    if mode == "off":
        return None
    if mode == "auto" and not visible_gpu_count():
        return None  # a CPU host: nothing to share
    started = time.perf_counter()
    try:
        daemon = MPSDaemon().start()
    except MPSUnavailable as error:
        if mode == "on":
            raise SystemExit(f"serve: {error}") from None
        print(f"serve: --mps auto: serving without MPS: {error}", flush=True)
        return None
    print(f"serve: CUDA MPS daemon on ({daemon.env()['CUDA_MPS_PIPE_DIRECTORY']}, started and checked in "
          f"{time.perf_counter() - started:.1f} s); --mps off serves without it", flush=True)
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
    """Triton under yolo_triton.serving.supervise (signals passed on, a dead stub stops it with exit 3); with --tls-cert,
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
    sys.exit(errors.run(main, "serve"))
