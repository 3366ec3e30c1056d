#!/usr/bin/env python3
"""What Triton's Python backend costs to hand a tensor from one ensemble step to the next, by tensor size.

    python -m tools.handover_probe [--sizes-mib 0.001 1 8 32 96] [--concurrency 4] [--out build/handover]

Our GPU ensemble spends more time in the Python backend around each step than inside it (tools/step_times.py);
this isolates that cost from YOLO. It writes a repository of two trivial Python steps — a producer that fills a
float32 tensor of N elements and a consumer that sums it — joined by an ensemble, twice: tensors on the GPU
(torch, DLPack, ``FORCE_CPU_ONLY_INPUT_TENSORS: no``, KIND_GPU, Triton's CUDA memory pool) and tensors on the host
(numpy, shared memory). The producer's and consumer's own work is a fill and a sum, so Triton's compute input /
infer / output per request are almost all hand-over. For every size and placement: perf_analyzer throughput and
p50, Triton's per-step statistics (differences of two snapshots), and the server log's warnings about the memory
pool. Writes handover.json, handover.csv and handover.png; without a GPU only the host placement runs (CI smoke).
"""
from __future__ import annotations

import argparse
import csv
import json
import tempfile
from pathlib import Path
from types import SimpleNamespace

from tqdm import tqdm


from tools import perf
from tools.bench import server_statistics
from tools.step_times import pool_warnings, triton_side
from yolo_triton.serving.triton import TritonServer, cuda_pool_flags, visible_gpu_count

# One file serves both steps of both placements; config parameters say which it is.
STEP_CODE = '''
import json
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        params = {k: v["string_value"] for k, v in json.loads(args["model_config"])["parameters"].items()}
        self.role, self.gpu = params["role"], params["place"] == "gpu"
        if self.gpu:
            import torch
            from torch.utils.dlpack import from_dlpack, to_dlpack
            self.torch, self.from_dlpack, self.to_dlpack = torch, from_dlpack, to_dlpack
            self.device = torch.device("cuda", int(args["model_instance_device_id"]))
            torch.cuda.set_device(self.device)

    def execute(self, requests):
        responses = []
        for request in requests:
            if self.role == "producer":
                n = int(pb_utils.get_input_tensor_by_name(request, "N").as_numpy().reshape(-1)[0])
                if self.gpu:
                    data = self.torch.full((n,), 1.0, device=self.device)
                    self.torch.cuda.current_stream(self.device).synchronize()
                    out = pb_utils.Tensor.from_dlpack("DATA", self.to_dlpack(data))
                else:
                    out = pb_utils.Tensor("DATA", np.full((n,), 1.0, np.float32))
                responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
            else:
                data = pb_utils.get_input_tensor_by_name(request, "DATA")
                if self.gpu:
                    on_gpu = not data.is_cpu()
                    total = float(self.from_dlpack(data.to_dlpack()).sum().item())
                else:
                    on_gpu, total = False, float(data.as_numpy().sum())
                responses.append(pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor("SUM", np.array([total], np.float64)),
                    pb_utils.Tensor("ON_GPU", np.array([on_gpu], np.bool_))]))
        return responses
'''


def step_config(name: str, role: str, place: str, kind: str) -> str:
    if role == "producer":
        io = ('input [ { name: "N" data_type: TYPE_INT64 dims: [ 1 ] } ]\n'
              'output [ { name: "DATA" data_type: TYPE_FP32 dims: [ -1 ] } ]')
    else:
        io = ('input [ { name: "DATA" data_type: TYPE_FP32 dims: [ -1 ] } ]\n'
              'output [ { name: "SUM" data_type: TYPE_FP64 dims: [ 1 ] }, { name: "ON_GPU" data_type: TYPE_BOOL dims: [ 1 ] } ]')
    force_cpu = "no" if place == "gpu" else "yes"
    return (f'name: "{name}"\nbackend: "python"\nmax_batch_size: 0\n{io}\n'
            f'instance_group [ {{ count: 1 kind: {kind} }} ]\n'
            f'parameters {{ key: "role" value: {{ string_value: "{role}" }} }}\n'
            f'parameters {{ key: "place" value: {{ string_value: "{place}" }} }}\n'
            f'parameters {{ key: "FORCE_CPU_ONLY_INPUT_TENSORS" value: {{ string_value: "{force_cpu}" }} }}\n')


def ensemble_config(place: str) -> str:
    return (f'name: "handover_{place}"\nplatform: "ensemble"\nmax_batch_size: 0\n'
            'input [ { name: "N" data_type: TYPE_INT64 dims: [ 1 ] } ]\n'
            'output [ { name: "SUM" data_type: TYPE_FP64 dims: [ 1 ] }, { name: "ON_GPU" data_type: TYPE_BOOL dims: [ 1 ] } ]\n'
            'ensemble_scheduling { step [\n'
            f'  {{ model_name: "producer_{place}" model_version: -1 input_map {{ key: "N" value: "N" }}'
            ' output_map { key: "DATA" value: "data" } },\n'
            f'  {{ model_name: "consumer_{place}" model_version: -1 input_map {{ key: "DATA" value: "data" }}'
            ' output_map [ { key: "SUM" value: "SUM" }, { key: "ON_GPU" value: "ON_GPU" } ] }\n] }\n')


def write_repository(root: Path, places) -> None:
    for place in places:
        kind = "KIND_GPU" if place == "gpu" else "KIND_CPU"
        for role in ("producer", "consumer"):
            folder = root / f"{role}_{place}"
            (folder / "1").mkdir(parents=True)
            (folder / "1" / "model.py").write_text(STEP_CODE)
            (folder / "config.pbtxt").write_text(step_config(f"{role}_{place}", role, place, kind))
        (root / f"handover_{place}" / "1").mkdir(parents=True)
        (root / f"handover_{place}" / "config.pbtxt").write_text(ensemble_config(place))


def check_answer(url: str, place: str, n: int) -> bool:
    """One request by tritonclient: the consumer's sum is n (every element handed over) and the tensor arrived
    where the placement says. Returns whether it came on the GPU."""
    import numpy as np
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    given = grpcclient.InferInput("N", [1], "INT64")
    given.set_data_from_numpy(np.array([n], np.int64))
    result = client.infer(f"handover_{place}", [given])
    total, on_gpu = float(result.as_numpy("SUM")[0]), bool(result.as_numpy("ON_GPU")[0])
    if total != float(n):
        raise RuntimeError(f"handover_{place}: the consumer summed {total}, expected {n}: elements were lost")
    return on_gpu


def plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for place in dict.fromkeys(r["place"] for r in rows):
        part = [r for r in rows if r["place"] == place]
        mib = [r["mib"] for r in part]
        ax1.plot(mib, [r["throughput_per_s"] for r in part], "o-", label=f"tensor on {place}")
        ax2.plot(mib, [r["handover_ms"] for r in part], "o-", label=f"tensor on {place}")
    ax1.set(xlabel="tensor MiB", ylabel="requests / s", title="ensemble throughput", xscale="log", yscale="log")
    ax2.set(xlabel="tensor MiB", ylabel="ms per request", xscale="log",
            title="Triton compute in+infer+out, both steps")
    for ax in (ax1, ax2):
        ax.legend()
    fig.suptitle("Python backend: one tensor handed between two ensemble steps")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes-mib", type=float, nargs="+", default=[0.001, 1, 8, 32, 96])
    parser.add_argument("--places", nargs="+", choices=["gpu", "cpu"], help="default: gpu and cpu with CUDA, else cpu")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--measurement-ms", type=int, default=2000)
    parser.add_argument("--stability", type=int, default=30)
    parser.add_argument("--max-trials", type=int, default=6)
    parser.add_argument("--retries", type=int, default=2)
    parser.add_argument("--cuda-pool-mib", type=int, default=4096)
    parser.add_argument("--out", type=Path, default=Path("build/handover"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    gpus = visible_gpu_count()
    places = args.places or (["gpu", "cpu"] if gpus else ["cpu"])
    if "gpu" in places and not gpus:
        parser.error("--places gpu needs a CUDA GPU and torch")

    repository = Path(tempfile.mkdtemp(prefix="handover_repo_"))
    write_repository(repository, places)
    log = args.out / "server.log"
    rows = []
    with TritonServer(repository, extra=cuda_pool_flags(args.cuda_pool_mib, gpus), log_path=log) as server:
        pa = SimpleNamespace(url=server.grpc_url, protocol="grpc", measurement_ms=args.measurement_ms,
                             stability=args.stability, max_trials=args.max_trials, retries=args.retries)
        points = [(place, mib) for place in places for mib in args.sizes_mib]
        for place, mib in tqdm(points, desc="handover"):
            n = max(1, int(mib * 2 ** 20 / 4))
            on_gpu = check_answer(server.grpc_url, place, n)
            data = args.out / f"n_{n}.json"
            data.write_text(json.dumps({"data": [{"N": {"content": [n], "shape": [1]}}]}))
            before = server_statistics(server.grpc_url)
            point = perf.run_point(pa, f"handover_{place}", args.concurrency, data, args.out / f"pa_{place}_{n}.csv")
            steps = triton_side(before, server_statistics(server.grpc_url))
            producer, consumer = steps[f"producer_{place}"], steps[f"consumer_{place}"]
            rows.append({
                "place": place, "mib": mib, "elements": n, "arrived_on_gpu": on_gpu,
                "throughput_per_s": point["throughput_img_s"], "p50_ms": point["p50_ms"],
                "handover_ms": round(sum(s[f"compute_{p}_ms"] for s in (producer, consumer)
                                         for p in ("input", "infer", "output")), 3),
                **{f"{role}_{p}_ms": s[f"compute_{p}_ms"] for role, s in (("producer", producer), ("consumer", consumer))
                   for p in ("input", "infer", "output")},
            })
    report = {"concurrency": args.concurrency, "rows": rows, "server_log_pool_warnings": pool_warnings(log)}
    (args.out / "handover.json").write_text(json.dumps(report, indent=1))
    with open(args.out / "handover.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, args.out / "handover.png")
    print(f"{'place':<5} {'MiB':>8} {'req/s':>9} {'p50 ms':>8} {'producer in/infer/out ms':>26} {'consumer in/infer/out ms':>26}")
    for r in rows:
        prod = "/".join(f"{r[f'producer_{p}_ms']:.2f}" for p in ("input", "infer", "output"))
        cons = "/".join(f"{r[f'consumer_{p}_ms']:.2f}" for p in ("input", "infer", "output"))
        print(f"{r['place']:<5} {r['mib']:>8g} {r['throughput_per_s']:>9.1f} {r['p50_ms']:>8.2f} {prod:>26} {cons:>26}")
    print("pool warnings in the server log:", json.dumps(report["server_log_pool_warnings"]))
    print(f"wrote {args.out}/handover.json, handover.csv, handover.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
