"""Plugin libraries: declared by a detector's config.pbtxt or given to `make serve`, checked before the server
starts, preloaded into the real tritonserver process (or handed to the TensorRT backend)."""
from __future__ import annotations

import ctypes.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from yolo_triton import repository as repo
from yolo_triton.serving.triton import PluginNotFound, TritonServer, declared_plugins, plugin_launch

from ..helpers import SMALL

ROOT = Path(__file__).resolve().parents[2]


def a_real_shared_library(tmp_path) -> Path:
    """A real ELF shared library under the plugin's name (libb64 is installed for perf_analyzer anyway)."""
    found = ctypes.util.find_library("b64") or ctypes.util.find_library("z")
    assert found, "no shared library to stand in"
    source = next(Path(d) / found for d in ("/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu", "/usr/lib", "/lib",
                                              "/usr/lib/aarch64-linux-gnu") if (Path(d) / found).exists())
    plugin = tmp_path / "liblayerplugin.so"
    shutil.copy(source, plugin)
    return plugin


def test_declared_plugins_are_read_back_from_the_generated_config(tmp_path):
    spec = SMALL.with_overrides(plugins=("/opt/a/liblayerplugin.so", "/opt/b/libother.so"))
    repo.write_repository(tmp_path, [spec])
    assert declared_plugins(tmp_path) == [Path("/opt/a/liblayerplugin.so"), Path("/opt/b/libother.so")]


def test_missing_plugin_fails_before_any_server_starts(tmp_path):
    spec = SMALL.with_overrides(plugins=(str(tmp_path / "missing" / "liblayerplugin.so"),))
    repo.write_repository(tmp_path / "repo", [spec])
    with pytest.raises(PluginNotFound, match="liblayerplugin.so"):
        TritonServer(tmp_path / "repo")
    done = subprocess.run([sys.executable, "-m", "yolo_triton.serving.serve", "--repository", str(tmp_path / "repo")], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "plugin library not found" in done.stderr and "missing/liblayerplugin.so" in done.stderr


def test_plugin_modes(tmp_path):
    plugin = a_real_shared_library(tmp_path)
    env, flags = plugin_launch([plugin, plugin], "preload", base_env={"LD_PRELOAD": "/already.so"})
    assert env == {"LD_PRELOAD": f"{plugin}:/already.so"} and flags == []  # duplicates once, earlier preloads kept
    env, flags = plugin_launch([plugin], "backend-config")
    assert env == {} and flags == [f"--backend-config=tensorrt,plugins={plugin}"]
    with pytest.raises(ValueError, match="plugin mode"):
        plugin_launch([plugin], "dlopen")


def test_declared_plugin_is_loaded_into_the_running_server(tmp_path, onnx_models):
    plugin = a_real_shared_library(tmp_path)
    spec = SMALL.with_overrides(plugins=(str(plugin),))
    repository = repo.write_repository(tmp_path / "repo", [spec], onnx_files={spec.name: onnx_models[SMALL.name]})
    with TritonServer(repository, log_path=tmp_path / "triton.log") as server:
        maps = Path(f"/proc/{server.process.pid}/maps").read_text()
        assert str(plugin) in maps
        assert server.is_ready()
