#!/usr/bin/env bash
# The GPU path on the GPU machine (the `device` tool, carrying .device from tools/gpu_bundle.sh):
#   bash tools/gpu_check.sh [tests|profile|bench|batching|ready|agreement|rect|all|multigpu|instances|steps|handover] [bench args...]
# tests: tests/gpu; bench: the GPU preset's YOLOv7-640 (RUNTIME=torch, GPU pre/post; the detector compiled ahead of
# time by make build-engines) and its CPU twin on one tritonserver: the build's and the start's seconds,
# tools/bench.py (cases a-e), then tools/eval.py's agreement of the GPU ensemble with the CPU twin on the
# scikit-image photos (EVAL=off skips it); batching: the same, with the detector's batch settings swept first on that
# server (tools/batching.py; SWEEP_ARGS its flags) and the bench run on the fastest; ready: the GPU preset's build
# (ahead-of-time package, else compile cache) and server start, timed; agreement: the GPU preset's ensemble (FP16) scored by tools/eval.py against the CPU preset's (onnxruntime
# FP32, CPU pre/post) served by a second tritonserver on ports 9000-9002, same weights; rect: case (b) with 1920×1080
# and 1280×720 frames, the GPU preset on the fixed square, then with rectangular inference (tools/scaling.py);
# multigpu: the ensemble (case b) on GPU 0 alone, then on every GPU, and tools/scaling.py; instances: (a) and (b)
# with 1, 2 and 3 instances of each GPU step (separate CUDA contexts time-share the GPU); profile: each GPU step
# alone, outside Triton (tools/gpu_profile.py); steps: case (b) with the steps' own phase timings
# (YOLO_TRITON_STEP_TIMES) beside Triton's statistics, for each batcher delay in QUEUE_DELAYS (tools/step_times.py);
# handover: the Python backend's cost of handing one tensor between two ensemble steps, by size, on the GPU and on
# the host (tools/handover_probe.py). MPS=on|off|auto serves with that `--mps` (unset: the GPU preset's auto, the
# steps' CUDA contexts sharing the GPU at once under a private MPS daemon). GPU_INSTANCES, GPU_QUEUE_DELAY_US and
# TORCH_COMPILE change those fields of the GPU preset (yolo_triton/placement.py). Logs and results go to $OUT (or
# build/gpu_check).
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

start_server() {  # repository, log file, [GPU ids the server sees; default all], [device preset; default gpu], [HTTP port]
  local device=${4:-gpu} http=${5:-8000}
  ( if [[ -n ${3:-} ]]; then export CUDA_VISIBLE_DEVICES=$3; fi
    exec setsid python3 -m yolo_triton.serving.serve --device $device --models yolov7 --repository "$1" --profile open \
      --http-port $http --grpc-port $((http + 1)) --metrics-port $((http + 2)) \
      $([[ $device == gpu && -n ${MPS:-} ]] && echo --mps $MPS) > "$2" 2>&1 ) &
  servers+=($!)
  for i in $(seq 300); do curl -sf localhost:$http/v2/health/ready && return 0; sleep 1; done
  echo "server not ready"; tail -30 "$2"; return 1
}
servers=()
build_and_start() {  # repository, server log, summary file, [build args]: the GPU preset's YOLOv7-640 built and
  # served, both timed (the ahead-of-time package, else the compile cache), and what the detector loaded
  local repo=$1 log=$2 summary=$3 started built; shift 3
  started=$(date +%s)
  python3 -m build.build_engines --device gpu --models yolov7 --repository "$repo" --artifacts /tmp/bench_artifacts \
    "$@" > /tmp/build.log 2>&1 || { tail -20 /tmp/build.log; return 1; }
  built=$(date +%s)
  grep -E "wrote|^yolov7:" /tmp/build.log | tail -4 | tee "$summary"
  grep -qE "ahead of time \(AOTInductor\) (failed|crashed)" /tmp/build.log && cp /tmp/build.log "$OUT/"
  start_server "$repo" "$log" || return 1  # not in a pipe: it records the server's pid for stop_server
  echo "build $((built - started)) s, server ready $(( $(date +%s) - built )) s" | tee -a "$summary"
  grep -E "ahead-of-time|compile cache|compiling|torch.compile" "$log" | cut -c1-300 | head -6 | tee -a "$summary"
}
stop_server() {  # the servers this script started (tests running beside it keep theirs); SIGTERM: serve stops Triton
  # (not SIGINT: a background job of a script starts with SIGINT ignored, and Python then never sees it)
  [[ ${#servers[@]} -gt 0 ]] && kill -TERM "${servers[@]}" 2>/dev/null
  for i in $(seq 60); do ps -o stat= -p "${servers[@]}" 2>/dev/null | grep -qv Z || break; sleep 1; done
  servers=()
  grep -c "successfully unloaded" "$1" || true
}

if [[ $what == tests || $what == all ]]; then
  python3 -m pytest tests/gpu -q -rs -p no:cacheprovider -s ${GPU_TESTS:+-k "$GPU_TESTS"} 2>&1 | tee "$OUT/tests.log" | grep -v "^$" | tail -40
fi
if [[ $what == profile || $what == all ]]; then
  python -m tools.gpu_profile --out "$OUT" 2>&1 | tail -8
fi
if [[ $what == bench || $what == batching || $what == all ]]; then
  repo=/tmp/bench_repository
  build_and_start $repo "$OUT/server.log" "$OUT/bench.log" --cpu-twin ${GPU_INSTANCES:+--gpu-instances $GPU_INSTANCES} \
    ${GPU_QUEUE_DELAY_US:+--gpu-queue-delay-us $GPU_QUEUE_DELAY_US} ${TORCH_COMPILE:+--torch-compile $TORCH_COMPILE} || exit 1
  if [[ $what == batching ]]; then  # the detector's batch settings swept on this server; the bench measures the best
    python -m tools.batching -u localhost:8001 -m yolov7 --out /tmp/batching --keep-best ${SWEEP_ARGS:-} > /tmp/batching.log 2>&1
    grep -v "it/s\]" /tmp/batching.log | tail -16 | tee -a "$OUT/batching.log"
    cp /tmp/batching/batching.json /tmp/batching/batching.png "$OUT/" 2>/dev/null
  fi
  mkdir -p /tmp/bench
  # the device tool brings back few files: raw perf_analyzer CSVs stay in /tmp, the summary goes to $OUT
  python -m tools.bench -u localhost:8001 -m yolov7 --repository $repo --out /tmp/bench "$@" > /tmp/bench.log 2>&1
  cp /tmp/bench/bench.json /tmp/bench/stats.json "$OUT/" 2>/dev/null
  grep -v "it/s\]" /tmp/bench.log | tail -40 | tee -a "$OUT/bench.log"
  nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
  if [[ ${EVAL:-on} == on ]]; then  # EVAL=off: the bench alone
    photos=$(python3 -c 'import skimage, pathlib; print(pathlib.Path(skimage.__file__).parent / "data")' 2>/dev/null || echo tests/fixtures)
    python3 -m tools.eval -u localhost:8001 -m yolov7_e2e --images "$photos" --reference yolov7_e2e_cpu --out /tmp/eval \
      > /tmp/eval.log 2>&1; grep -v "it/s\]" /tmp/eval.log | tail -6 | tee -a "$OUT/bench.log"
    cp /tmp/eval/metrics.json "$OUT/eval_metrics.json" 2>/dev/null
  fi
  stop_server "$OUT/server.log"
fi
if [[ $what == ready ]]; then
  build_and_start /tmp/ready_repository "$OUT/server_ready.log" "$OUT/ready.log" || exit 1
  stop_server "$OUT/server_ready.log"
fi
if [[ $what == agreement ]]; then
  python3 -m build.build_engines --device gpu --models yolov7 --repository /tmp/agree_gpu --artifacts /tmp/bench_artifacts \
    ${TORCH_COMPILE:+--torch-compile $TORCH_COMPILE} > /tmp/build_agree_gpu.log 2>&1 || { tail -20 /tmp/build_agree_gpu.log; exit 1; }
  python3 -m build.build_engines --device cpu --models yolov7 --repository /tmp/agree_cpu --artifacts /tmp/bench_artifacts \
    > /tmp/build_agree_cpu.log 2>&1 || { tail -20 /tmp/build_agree_cpu.log; exit 1; }
  grep -v "^\s*$" /tmp/build_agree_gpu.log | tail -25 > "$OUT/build_gpu.log"
  start_server /tmp/agree_gpu "$OUT/server_gpu.log" || exit 1
  start_server /tmp/agree_cpu /tmp/server_cpu.log "" cpu 9000 || exit 1
  photos=$(python3 -c 'import skimage, pathlib; print(pathlib.Path(skimage.__file__).parent / "data")' 2>/dev/null || echo tests/fixtures)
  for labels in multi-label no-multi-label; do
    python3 -m tools.eval -u localhost:8001 -m yolov7_e2e --images "$photos" --reference localhost:9001/yolov7_e2e \
      --$labels --out /tmp/agree_$labels > /tmp/agree_$labels.log 2>&1
    echo "== $labels"; grep -v "it/s\]" /tmp/agree_$labels.log | tail -8
    cp /tmp/agree_$labels/metrics.json "$OUT/agreement_$labels.json" 2>/dev/null
  done | tee "$OUT/agreement.log"
  stop_server "$OUT/server_gpu.log"
fi
if [[ $what == rect ]]; then
  # the GPU preset's YOLOv7-640 on the fixed square, then with rectangular inference: case (b) with 16:9 frames
  benches=()
  for mode in square rect; do
    repo=/tmp/rect_repository_$mode
    python3 -m build.build_engines --device gpu --models yolov7 --repository $repo --artifacts /tmp/bench_artifacts \
      $([[ $mode == rect ]] && echo --rect) ${TORCH_COMPILE:+--torch-compile $TORCH_COMPILE} > /tmp/build_$mode.log 2>&1 \
      || { tail -20 /tmp/build_$mode.log; exit 1; }
    started=$(date +%s)
    start_server $repo "$OUT/server_$mode.log" || exit 1
    echo "== $mode: server ready in $(( $(date +%s) - started )) s" | tee -a "$OUT/rect.log"
    python -m tools.bench -u localhost:8001 -m yolov7 --repository $repo --out /tmp/rect_$mode --skip a c d e \
      --sizes 1920x1080 1280x720 "$@" > /tmp/rect_$mode.log 2>&1
    grep -v "it/s\]" /tmp/rect_$mode.log | tail -12 | tee -a "$OUT/rect.log"
    stop_server "$OUT/server_$mode.log"
    cp /tmp/rect_$mode/bench.json "$OUT/bench_$mode.json"
    benches+=("$mode=/tmp/rect_$mode/bench.json")
  done
  python -m tools.scaling --bench "${benches[@]}" --case b --out "$OUT" | tee -a "$OUT/rect.log"
fi
if [[ $what == multigpu ]]; then
  repo=/tmp/mg_repository
  python3 -m build.build_engines --device gpu --models yolov7 --repository $repo --artifacts /tmp/bench_artifacts \
    > /tmp/build_mg.log 2>&1 || { tail -20 /tmp/build_mg.log; exit 1; }
  count=$(nvidia-smi -L | wc -l); all=$(seq -s, 0 $((count - 1)))
  benches=()
  for visible in 0 "$all"; do
    n=$(tr , '\n' <<< "$visible" | wc -l)
    start_server $repo /tmp/server_mg_$n.log "$visible" || exit 1
    python -m tools.bench -u localhost:8001 -m yolov7 --out /tmp/mg_$n --skip a c d --sizes 640x480 "$@" \
      > /tmp/mg_$n.log 2>&1
    grep -v "it/s\]" /tmp/mg_$n.log | tail -8 | tee -a "$OUT/multigpu.log"
    nvidia-smi --query-gpu=index,utilization.gpu,memory.used --format=csv,noheader | tee -a "$OUT/multigpu.log"
    stop_server /tmp/server_mg_$n.log
    benches+=("$n GPU=/tmp/mg_$n/bench.json")
  done
  python -m tools.scaling --bench "${benches[@]}" --case b --out "$OUT" | tee -a "$OUT/multigpu.log"
fi
if [[ $what == instances ]]; then
  benches=()
  for n in ${INSTANCE_COUNTS:-1 2 3}; do
    repo=/tmp/inst_repository_$n
    python3 -m build.build_engines --device gpu --models yolov7 --repository $repo --artifacts /tmp/bench_artifacts \
      --gpu-instances $n ${GPU_QUEUE_DELAY_US:+--gpu-queue-delay-us $GPU_QUEUE_DELAY_US} > /tmp/build_inst.log 2>&1 || { tail -20 /tmp/build_inst.log; exit 1; }
    start_server $repo /tmp/server_inst_$n.log || exit 1
    python -m tools.bench -u localhost:8001 -m yolov7 --out /tmp/inst_$n --skip c d --sizes 640x480 "$@" > /tmp/inst_$n.log 2>&1
    echo "== $n instance(s) per GPU step" | tee -a "$OUT/instances.log"
    grep -v "it/s\]" /tmp/inst_$n.log | tail -7 | tee -a "$OUT/instances.log"
    stop_server /tmp/server_inst_$n.log
    cp /tmp/inst_$n/stats.json "$OUT/stats_inst_$n.json"
    benches+=("$n instance(s)=/tmp/inst_$n/bench.json")
  done
  python -m tools.scaling --bench "${benches[@]}" --case b --out "$OUT" | tee -a "$OUT/instances.log"
fi
if [[ $what == steps ]]; then
  for delay in ${QUEUE_DELAYS:-100 1000}; do
    repo=/tmp/steps_repository_$delay; times=/tmp/steps_times_$delay; rm -rf $times
    python3 -m build.build_engines --device gpu --models yolov7 --repository $repo --artifacts /tmp/bench_artifacts \
      --gpu-queue-delay-us $delay ${GPU_INSTANCES:+--gpu-instances $GPU_INSTANCES} ${TORCH_COMPILE:+--torch-compile $TORCH_COMPILE} > /tmp/build_steps.log 2>&1 || { tail -20 /tmp/build_steps.log; exit 1; }
    YOLO_TRITON_STEP_TIMES=$times start_server $repo /tmp/server_steps_$delay.log || exit 1
    python3 -c "import json; from tools import bench; print(json.dumps(bench.server_statistics('localhost:8001')))" \
      > /tmp/stats_before_$delay.json
    python -m tools.bench -u localhost:8001 -m yolov7 --out /tmp/steps_bench_$delay --skip ${SKIP:-a c d} --sizes 640x480 "$@" \
      > /tmp/steps_bench_$delay.log 2>&1
    echo "== GPU steps with a ${delay} us batcher delay" | tee -a "$OUT/steps.log"
    grep -v "it/s\]" /tmp/steps_bench_$delay.log | grep -A30 "^config" | tee -a "$OUT/steps.log"
    cp /tmp/steps_bench_$delay/bench.json "$OUT/bench_$delay.json"
    python -m tools.step_times $times --stats-before /tmp/stats_before_$delay.json \
      --stats-after /tmp/steps_bench_$delay/stats.json --server-log /tmp/server_steps_$delay.log \
      --out "$OUT/steps_$delay.json" | tee -a "$OUT/steps.log"
    stop_server /tmp/server_steps_$delay.log
  done
fi
if [[ $what == handover ]]; then
  python -m tools.handover_probe --out "$OUT/handover" "$@" 2>&1 | grep -v "it/s\]" | tail -16
fi
