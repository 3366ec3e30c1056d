#!/usr/bin/env bash
# The GPU path on the GPU machine (the `device` tool, carrying .device from ../shared/device/triton-bundle.sh):
#   bash tools/gpu_check.sh [tests|bench|all] [bench args...]
# tests: tests/test_gpu.py and tests/test_torch_runtime.py; bench: RUNTIME=torch YOLOv7-640 with GPU pre/post and
# its CPU twin on one tritonserver, then tools/bench.py. Logs and results go to $OUT (or build/gpu_check).
set -uo pipefail
what=${1:-all}; shift || true
OUT=${OUT:-build/gpu_check}; mkdir -p "$OUT"
source .device/setup.sh
# The Python backend stub ignores PYTHONPATH: make this checkout and the carried tritonclient importable from
# the environment of the first python3 on PATH.
site=$(python3 -c 'import site; print(site.getsitepackages()[0])')
printf '%s\n' "$PWD" /tmp/triton/py /tmp/site > "$site/yolo_triton_checkout.pth"
export PYTHONUNBUFFERED=1
{ python3 -c "import numpy, torch, torchvision; print('numpy', numpy.__version__, 'torch', torch.__version__, 'torchvision', torchvision.__version__)"
  python3 -c "import cv2; print('cv2', cv2.__version__)" 2>&1 | tail -1
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; nproc; } 2>&1 | tee "$OUT/env.txt"

if [[ $what == tests || $what == all ]]; then
  python3 -m pytest tests/test_gpu.py -q -rs -p no:cacheprovider -s 2>&1 | tee "$OUT/tests.log" | grep -v "^$" | tail -40
fi
if [[ $what == bench || $what == all ]]; then
  repo=/tmp/bench_repository
  python3 build/build_engines.py --runtime torch --models yolov7 --cpu-twin --repository $repo --artifacts /tmp/bench_artifacts \
    > /tmp/build.log 2>&1 || { tail -20 /tmp/build.log; exit 1; }
  mkdir -p /tmp/bench
  setsid python3 tools/serve.py --repository $repo --http-port 8000 --grpc-port 8001 --metrics-port 8002 --profile open \
    -- --cuda-memory-pool-byte-size=0:4294967296 > "$OUT/server.log" 2>&1 &
  for i in $(seq 300); do curl -sf localhost:8000/v2/health/ready && break; sleep 1; done
  curl -sf localhost:8000/v2/health/ready || { echo "server not ready"; tail -30 "$OUT/server.log"; exit 1; }
  # the device tool brings back few files: raw perf_analyzer CSVs stay in /tmp, the summary goes to $OUT
  python3 tools/bench.py -u localhost:8001 -m yolov7 --out /tmp/bench "$@" > /tmp/bench/../bench.log 2>&1
  cp /tmp/bench/bench.json /tmp/bench/bench.csv /tmp/bench/bench.png /tmp/bench/stats.json "$OUT/" 2>/dev/null
  grep -v "it/s\]" /tmp/bench.log | tail -40 | tee "$OUT/bench.log"
  nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
  kill -INT %1 2>/dev/null; sleep 5; grep -c "successfully unloaded" "$OUT/server.log" || true
fi
