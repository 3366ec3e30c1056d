"""The NGC/docker side: pinned images (deploy/ngc.env) and the docker command lines that build and serve plans.

Nothing here needs docker to be importable; the functions return command lines (tested), and ``docker_status``
says whether they can run on this host and, if not, why, in words for the user.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

REPO_ROOT = Path(__file__).resolve().parents[2]
NGC_ENV = REPO_ROOT / "deploy" / "ngc.env"
SERVER_IMAGE_TAG = "yolo-triton-server"  # our image: Triton + our Python models' imports (deploy/Dockerfile)
BUILDER_IMAGE_TAG = "yolo-triton-builder"  # NGC TensorRT + the builder's imports (deploy/Dockerfile.build)

# The flags the seed deployments run Triton with (NGC's recommended settings for the Python backend's shared
# memory and for pinned host memory).
DOCKER_RUN_FLAGS = ("--gpus", "all", "--ipc=host", "--shm-size=1g", "--ulimit", "memlock=-1", "--ulimit", "stack=67108864")
CONTAINER_MODELS = "/models"
CONTAINER_WORKSPACE = "/workspace"
CONTAINER_PLUGINS = "/plugins"


def ngc_versions(path: Path = NGC_ENV) -> Dict[str, str]:
    """KEY=VALUE lines of deploy/ngc.env (comments and blank lines skipped)."""
    values = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def docker_status() -> Optional[str]:
    """None if docker can run containers here, else why not (for the user)."""
    docker = shutil.which("docker")
    if docker is None:
        return "docker is not installed (no `docker` on PATH)"
    try:
        done = subprocess.run([docker, "info", "--format", "{{json .Runtimes}}"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"`docker info` failed: {error}"
    if done.returncode != 0:
        return f"the docker engine is not reachable: {done.stderr.strip() or done.stdout.strip()}"
    if "nvidia" not in done.stdout:
        return "docker has no nvidia runtime (install the NVIDIA Container Toolkit for --gpus)"
    return None


def image_build_command(dockerfile: str, tag: str, base_arg: str, base_image: str) -> List[str]:
    return ["docker", "build", "-f", str(REPO_ROOT / "deploy" / dockerfile), "--build-arg", f"{base_arg}={base_image}",
            "-t", tag, str(REPO_ROOT)]


def server_image(versions: Optional[Dict[str, str]] = None) -> tuple:
    """(image tag, the docker build command that makes it)."""
    versions = versions or ngc_versions()
    tag = f"{SERVER_IMAGE_TAG}:{versions['NGC_RELEASE']}"
    return tag, image_build_command("Dockerfile", tag, "TRITON_IMAGE", versions["TRITON_IMAGE"])


def builder_image(versions: Optional[Dict[str, str]] = None) -> tuple:
    versions = versions or ngc_versions()
    tag = f"{BUILDER_IMAGE_TAG}:{versions['NGC_RELEASE']}"
    return tag, image_build_command("Dockerfile.build", tag, "TENSORRT_IMAGE", versions["TENSORRT_IMAGE"])


def docker_build_engine_command(builder_args: Sequence[str], image: str, workspace: Path = REPO_ROOT,
                                user: Optional[str] = None) -> List[str]:
    """Run build.build_engine inside the builder image with the checkout mounted at /workspace, as the host's
    user (so plans and caches are not left owned by root). Paths inside the checkout become relative (the same
    inside the container); files elsewhere (plugins, calibration images) are mounted read-only under /mnt."""
    workspace = Path(workspace).resolve()
    if user is None:
        user = f"{os.getuid()}:{os.getgid()}"
    mounts, args = [], []
    for arg in builder_args:
        path = Path(arg)
        if path.is_absolute() and workspace in path.resolve().parents:
            arg = str(path.resolve().relative_to(workspace))
        elif path.is_absolute():
            target = f"/mnt/input{len(mounts) // 2}/{path.name}"
            mounts += ["-v", f"{path.resolve()}:{target}:ro"]
            arg = target
        args.append(arg)
    return ["docker", "run", "--rm", "--gpus", "all", "--user", user, "-v", f"{workspace}:{CONTAINER_WORKSPACE}",
            *mounts, "-w", CONTAINER_WORKSPACE, image, "python3", "-m", "build.build_engine", *args]


def docker_serve_command(repository: Path, image: str, http_port: int = 8000, grpc_port: int = 8001,
                         metrics_port: int = 8002, plugins: Sequence[Path] = (), plugin_mode: str = "preload") -> List[str]:
    """``docker run`` of our Triton image on ``repository``, with the seed's flags; plugins mounted read-only and
    preloaded (LD_PRELOAD) or handed to the TensorRT backend."""
    command = ["docker", "run", "--rm", *(["-it"] if sys.stdin.isatty() else []), *DOCKER_RUN_FLAGS,
               "-p", f"{http_port}:8000", "-p", f"{grpc_port}:8001", "-p", f"{metrics_port}:8002",
               "-v", f"{Path(repository).resolve()}:{CONTAINER_MODELS}"]
    inside = []
    for index, plugin in enumerate(plugins):
        target = f"{CONTAINER_PLUGINS}/{index}/{Path(plugin).name}"
        command += ["-v", f"{Path(plugin).resolve()}:{target}:ro"]
        inside.append(target)
    tritonserver_flags = [f"--model-repository={CONTAINER_MODELS}"]
    if inside and plugin_mode == "preload":
        command += ["-e", f"LD_PRELOAD={':'.join(inside)}"]
    elif inside:
        tritonserver_flags.append(f"--backend-config=tensorrt,plugins={';'.join(inside)}")
    return command + [image, "tritonserver", *tritonserver_flags]
