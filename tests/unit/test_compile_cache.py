"""The build's compile cache (where AOTInductor's package fails, the server's torch.compile at load starts from what
the build compiled): saved in one process, loaded in another with empty caches of its own, torch's own counters
say the second compiled nothing — on the CPU, where Inductor compiles C++ instead of Triton kernels; the same calls
serve the GPU (tests/gpu runs them there)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from ..helpers import ROOT

pytestmark = pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                                reason="Inductor compiles C++ on the CPU: no C compiler here")

# a small convolutional network compiled as the server compiles the detector (compile_detector: batch 1, then one
# graph for every larger batch), at three batch sizes
SCRIPT = """
import json, sys, time, torch
from torch._dynamo.utils import counters
from yolo_triton.pipeline.gpu_detector import compile_detector, compile_seconds, load_compile_cache, save_compile_cache
action, path = sys.argv[1], sys.argv[2]
identity = json.loads(sys.argv[3])
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.SiLU(), torch.nn.Conv2d(8, 4, 1)).eval()
why = load_compile_cache(path, identity) if action == "load" else ""
compiled = compile_detector(net, "default")
started = time.perf_counter()
with torch.no_grad():
    equal = all(torch.allclose(compiled(x), net(x), atol=1e-5) for x in (torch.rand(b, 3, 16, 16) for b in (1, 2, 3)))
wall = time.perf_counter() - started
size = save_compile_cache(path, identity) if action == "save" else 0
print(json.dumps({"why": why, "equal": equal, "size": size, "inductor": dict(counters["inductor"]),
                  "seconds": compile_seconds(), "wall": wall}))
"""
IDENTITY = {"torch": "this one", "device": "cpu", "mode": "default", "input": [3, 16, 16], "max_batch": 2}


def run(action, path, tmp_path, identity=IDENTITY):
    cache_dir = tmp_path / f"inductor-{action}-{len(list(tmp_path.glob('inductor-*')))}"  # empty: this process's own
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache_dir), "TORCHINDUCTOR_COMPILE_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", SCRIPT, action, str(path), json.dumps(identity)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_compile_cache_saved_by_one_process_spares_the_next_its_compiling(tmp_path):
    path = tmp_path / "model.compile-cache"
    saved = run("save", path, tmp_path)
    # two graphs for three batch sizes: batch 1, and the dynamic batch that serves 2 and 3
    assert saved["equal"] and saved["size"] > 0 and saved["inductor"].get("fxgraph_cache_miss") == 2, saved
    assert json.loads(path.with_name(path.name + ".json").read_text()) == IDENTITY

    # the load log's breakdown: torch's own timers, checked against the wall clock around the calls that compiled
    spent = saved["seconds"]
    assert 0 < spent["tracing"] and 0 < spent["inductor"] and spent["tracing"] + spent["inductor"] <= spent["total"]
    assert spent["total"] <= saved["wall"], saved

    loaded = run("load", path, tmp_path)
    assert loaded["why"] == "" and loaded["equal"], loaded
    # both graphs found compiled in the cache the file seeded; nothing compiled again
    assert loaded["inductor"].get("fxgraph_cache_hit") == 2 and not loaded["inductor"].get("fxgraph_cache_miss"), loaded

    other = {**IDENTITY, "torch": "another one"}
    refused = run("load", path, tmp_path, other)
    assert refused["why"] == "the compile cache model.compile-cache was made for torch this one, this is another one"
    assert refused["equal"] and refused["inductor"].get("fxgraph_cache_miss") == 2, refused  # compiled from scratch


def test_compile_cache_missing_or_damaged_is_said_and_compiled_from_scratch(tmp_path):
    from yolo_triton.pipeline.gpu_detector import load_compile_cache

    path = tmp_path / "model.compile-cache"
    assert load_compile_cache(path, IDENTITY) == "no compile cache model.compile-cache"
    path.write_bytes(b"not a cache")
    path.with_name(path.name + ".json").write_text(json.dumps(IDENTITY))
    assert load_compile_cache(path, IDENTITY).startswith("the compile cache model.compile-cache does not load: ")


def test_load_split_says_where_the_load_went():
    """The detector's load line: the cache read, the compile (torch's timers), the graphs' first runs besides
    compiling (the runner's warm-up less the compile inside it), the captures, and what is left of the total."""
    from yolo_triton.pipeline.gpu_detector import load_split

    line = load_split(22.0, 0.5, {"total": 8.0, "tracing": 6.0, "inductor": 1.5}, {"runs": 19.0, "captures": 1.5})
    assert line == (": reading the cache 0.5 s, compiling 8.0 s (Dynamo tracing 6.0 s, Inductor 1.5 s), the graphs' "
                    "first runs besides compiling 11.0 s, CUDA graph captures 1.5 s, the rest 1.0 s")
    assert load_split(22.0, 0.5, {}, {"runs": 19.0, "captures": 1.5}) == ""  # no timers in this torch: no split
