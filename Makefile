# YOLO on Triton — the commands of the README.
#   make serve            set up, build the detector model if missing, start Triton (HTTP 8000, gRPC 8001, metrics 8002)
#   make test             set up and run the test suite
#   make build-engines    build the detector artifacts for RUNTIME into build/ and the model repository
#   make perf             perf_analyzer sweep against the running `make serve` (CSV, JSON, PNG in build/perf)
#   make bench            detector alone vs ensembles vs client preprocessing, one server (build/bench)
#   make fuzz             the decode functions under 100,000 hypothesis inputs (FUZZ_EXAMPLES)
#   make soak             10,000 requests at concurrency 64, 10 % malformed, against the running `make serve` (build/soak)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
RUNTIME ?= onnxruntime
MODELS ?= yolov7 yolov4
REPOSITORY ?= model_repository
ARTIFACTS ?= build/artifacts
HTTP_PORT ?= 8000
GRPC_PORT ?= 8001
METRICS_PORT ?= 8002
# Per model (see build/build_engines.py): WEIGHTS_yolov7=yolov7.pt, WEIGHTS_yolov4=yolov4.weights CFG_yolov4=yolov4.cfg,
# or ONNX_yolov7=your-export.onnx; without any of them the model gets seeded RANDOM weights (SEED)
SEED ?= 0
# plugin libraries to load into tritonserver (space-separated), besides those the detectors' configs declare
PLUGINS ?=
PLUGIN_MODE ?= preload
# RUNTIME=tensorrt (build/build_engine.py; deploy/ngc.env pins the NGC images): precision fp32|fp16|int8, the
# batch profile's opt size (min 1, max = the spec's max_batch_size), INT8 calibration images, NMS in the engine
PRECISION ?= fp16
OPT_BATCH ?= 8
CALIB_IMAGES ?=
END2END ?=
# RUNTIME=torch (our PyTorch modules on the GPU): pre/post on the GPU too (PREPOST=gpu, default with CUDA), a CPU
# twin ensemble for `make bench` (CPU_TWIN=1), and the CUDA memory pool Triton hands GPU tensors through
PREPOST ?=
CPU_TWIN ?=
# MPS: the server's CUDA contexts (one per Python step instance) share the GPU at once under a private CUDA MPS
# daemon instead of taking turns (yolo_triton/mps.py; the fastest GPU set-up measured: GPU_INSTANCES=2 with MPS;
# without MPS, GPU_INSTANCES=1 was faster: set it with MPS=0).
# auto (RUNTIME=torch): on where the host has a GPU and nvidia-cuda-mps-control, else off (said why); 1: on or
# stop; 0: off. The other runtimes: off unless MPS=1
MPS ?= auto
# production: the model-repository, shared-memory, trace and logging APIs need the header admin-key (the key:
# $TRITON_ADMIN_KEY, else build/admin-key, made on first use); open: nothing restricted (make bench needs it for
# shared memory). TLS_CERT + TLS_KEY: TLS on gRPC, HTTPS on HTTPS_PORT; TLS_CLIENT_CA: mutual TLS
PROFILE ?= production
TLS_CERT ?=
TLS_KEY ?=
TLS_CLIENT_CA ?=
HTTPS_PORT ?= 8443
# GPU steps: instances per GPU, and which GPUs (comma-separated ids; empty: every GPU the server sees). The CUDA
# memory pool is set on each visible GPU.
GPU_INSTANCES ?= 2
GPUS ?=
GPU_QUEUE_DELAY_US ?= 100
# RUNTIME=torch on a GPU: the detector through torch.compile at load (off | default | max-autotune-no-cudagraphs;
# default: 1.56–1.57× the detector's img/s on an H200, ~2 minutes more at load; off: loads fast)
TORCH_COMPILE ?= default
CUDA_POOL_MIB ?= 4096
BENCH_MODEL ?= yolov7
BENCH_ARGS ?=
FUZZ_EXAMPLES ?= 100000
SOAK_MODEL ?= yolov7_e2e
SOAK_ARGS ?=
PYTEST_ARGS ?=
PERF_MODEL ?= yolov7_e2e
PERF_CONCURRENCY ?= 1 2 4 8
PERF_ARGS ?=

PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: help venv system-deps build-engines repository serve test perf bench fuzz soak clean clean-artifacts
help:
	@sed -n 's/^#   //p' Makefile

# Debian packages: libpythonX.Y for the Triton Python backend stub (it embeds the system libpython),
# libb64-0d for perf_analyzer, pythonX.Y-venv where the interpreter cannot make a venv (Debian's python3 without
# ensurepip). Installed with apt-get when missing (root, or sudo).
system-deps:
	@ver=$$($(PYTHON) -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")'); \
	missing=""; \
	ldconfig -p | grep -q "libpython$$ver.so.1.0" || missing="$$missing libpython$$ver"; \
	ldconfig -p | grep -q "libb64.so.0d" || missing="$$missing libb64-0d"; \
	$(PYTHON) -c "import ensurepip" 2>/dev/null || missing="$$missing python$$ver-venv"; \
	if [ -n "$$missing" ]; then \
	  sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	  echo "installing Debian packages:$$missing"; \
	  $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq $$missing; \
	fi

$(STAMP): requirements.txt requirements-server.txt requirements-test.txt pyproject.toml
	$(MAKE) --no-print-directory system-deps
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip==24.2
	$(PY) -m pip install -q -r requirements-test.txt
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -c "import yolo_triton.server as s; print('embedded tritonserver:', s.embedded_triton().binary)"
	touch $@

venv: $(STAMP)

repository: $(STAMP)
	$(PY) -m yolo_triton.repository --repository $(REPOSITORY) --models $(MODELS) --runtime $(RUNTIME)

# RUNTIME=onnxruntime: each model's ONNX (the user's, or exported from their weights or seeded random ones)
# into the repository. Rebuilt when its inputs change; `make clean-artifacts` forces it.
build-engines: $(STAMP)
	$(PY) build/build_engines.py --models $(MODELS) --runtime $(RUNTIME) --artifacts $(ARTIFACTS) \
	  --repository $(REPOSITORY) --seed $(SEED) --precision $(PRECISION) --opt-batch $(OPT_BATCH) \
	  $(if $(CALIB_IMAGES),--calib-images $(CALIB_IMAGES)) $(if $(END2END),--end2end) \
	  $(if $(PREPOST),--prepost $(PREPOST)) $(if $(CPU_TWIN),--cpu-twin) --gpu-instances $(GPU_INSTANCES) --gpu-queue-delay-us $(GPU_QUEUE_DELAY_US) $(if $(GPUS),--gpus $(GPUS)) \
	  --torch-compile $(TORCH_COMPILE)

serve: build-engines
	$(PY) tools/serve.py --repository $(REPOSITORY) --http-port $(HTTP_PORT) --grpc-port $(GRPC_PORT) --metrics-port $(METRICS_PORT) \
	  --runtime $(RUNTIME) --plugin-mode $(PLUGIN_MODE) $(foreach plugin,$(PLUGINS),--plugin $(plugin)) --profile $(PROFILE) \
	  $(if $(TLS_CERT),--tls-cert $(TLS_CERT) --tls-key $(TLS_KEY) --https-port $(HTTPS_PORT)) $(if $(TLS_CLIENT_CA),--tls-client-ca $(TLS_CLIENT_CA)) \
	  $(if $(filter torch,$(RUNTIME)),--cuda-pool-mib $(CUDA_POOL_MIB)) --mps $(if $(filter torch,$(RUNTIME)),$(or $(MPS),off),$(if $(filter 1 on,$(MPS)),on,off))

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

perf: $(STAMP)
	$(PY) tools/perf.py -u localhost:$(GRPC_PORT) -m $(PERF_MODEL) --concurrency $(PERF_CONCURRENCY) --out build/perf $(PERF_ARGS)

bench: $(STAMP)
	$(PY) tools/bench.py -u localhost:$(GRPC_PORT) -m $(BENCH_MODEL) --out build/bench $(BENCH_ARGS)

fuzz: $(STAMP)
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest tests/test_bad_inputs.py -k fuzz -p no:cacheprovider -q --durations=1 -o timeout=3600

soak: $(STAMP)
	$(PY) tools/soak.py -u localhost:$(GRPC_PORT) -m $(SOAK_MODEL) --out build/soak $(SOAK_ARGS)

clean-artifacts:
	rm -rf $(ARTIFACTS)/*.onnx $(ARTIFACTS)/*.onnx.json $(REPOSITORY)/*/1/model.onnx

clean: clean-artifacts
	rm -rf $(VENV)
