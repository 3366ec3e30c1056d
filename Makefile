# YOLO on Triton — `make help` lists the targets; docs/ says the rest.
#   make serve            set up, build the detectors if missing, start Triton (HTTP 8000, gRPC 8001, metrics 8002)
#   make test             set up and run the test suite
#   make build-engines    the detector artifacts and the model repository for DEVICE / RUNTIME / MODELS
#   make repository       the model repository's configs alone, no detector built (to read them)
#   make perf             perf_analyzer sweep against the running server (build/perf: CSV, JSON, PNG)
#   make bench            detector alone vs ensembles vs client preprocessing, against the running server (build/bench)
#   make soak             10,000 requests at concurrency 64, 10 % malformed, against the running server (build/soak)
#   make fuzz             the decoders under 100,000 hypothesis inputs
#   make eval             COCO mAP of the running server's MODEL: ANNOTATIONS=instances.json IMAGES=dir/ [CONF=0.001
#                         IOU=0.65 MAX_DET=300]; REFERENCE=other_ensemble|host:port[/name] scores it against another
#
# The variables a user sets (each default lives in the script it reaches; `--help` there lists the expert flags):
#   DEVICE=cpu|gpu        the preset: runtime, where pre/post run, instances, torch.compile, MPS (yolo_triton/placement.py)
#   RUNTIME=onnxruntime|torch|tensorrt   the detector's runtime, if not the preset's
#   MODELS="yolov7 yolov4"               what to build and serve; per model WEIGHTS_<m>=, CFG_<m>=, ONNX_<m>= (docs/models.md)
#   PRECISION=fp16|fp32|int8             RUNTIME=tensorrt
#   PLUGINS="a.so b.so"                  plugin libraries to load into the server
#   PROFILE=production|open              production: admin APIs need the admin key (docs/security.md)
#   TLS_CERT=, TLS_KEY=                  TLS on gRPC, HTTPS on 8443
#   MODEL=yolov7_e2e, URL=localhost:8001 what perf / bench / soak measure
#   BUILD_ARGS=, SERVE_ARGS=, ARGS=      more flags for build/build_engines.py, yolo_triton/serving/serve.py, the tool
#   PYTEST_ARGS=, PYTHON=python3
SHELL := /bin/bash
PYTHON ?= python3
DEVICE ?= cpu
RUNTIME ?=
MODELS ?= yolov7 yolov4
PRECISION ?=
PLUGINS ?=
PROFILE ?= production
TLS_CERT ?=
TLS_KEY ?=
MODEL ?= yolov7_e2e
URL ?= localhost:8001
BUILD_ARGS ?=
SERVE_ARGS ?=
ARGS ?=
PYTEST_ARGS ?=

VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PLACEMENT = --device $(DEVICE) $(if $(RUNTIME),--runtime $(RUNTIME)) --models $(MODELS)

.PHONY: help venv system-deps build-engines repository serve test perf bench fuzz soak eval clean clean-artifacts
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
	$(PY) -c "import yolo_triton.serving.triton as s; print('embedded tritonserver:', s.embedded_triton().binary)"
	touch $@

venv: $(STAMP)

# Each model's detector (the user's ONNX, or exported from their weights or seeded random ones; a TensorRT plan
# for RUNTIME=tensorrt), then model_repository/. Rebuilt when its inputs change; `make clean-artifacts` forces it.
build-engines: $(STAMP)
	$(PY) -m build.build_engines $(PLACEMENT) $(if $(PRECISION),--precision $(PRECISION)) $(BUILD_ARGS)

repository: $(STAMP)
	$(PY) -m build.build_engines $(PLACEMENT) --configs-only $(BUILD_ARGS)

serve: build-engines
	$(PY) -m yolo_triton.serving.serve $(PLACEMENT) --profile $(PROFILE) $(foreach plugin,$(PLUGINS),--plugin $(plugin)) \
	  $(if $(TLS_CERT),--tls-cert $(TLS_CERT) --tls-key $(TLS_KEY)) $(SERVE_ARGS)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

perf: $(STAMP)
	$(PY) -m tools.perf -u $(URL) -m $(MODEL) $(ARGS)

bench: $(STAMP)
	$(PY) -m tools.bench -u $(URL) -m $(MODEL) $(ARGS)

soak: $(STAMP)
	$(PY) -m tools.soak -u $(URL) -m $(MODEL) $(ARGS)

# eval's own variables, passed on only when set (the defaults, the official test.py's, live in tools/eval.py)
eval: $(STAMP)
	$(PY) -m tools.eval -u $(URL) -m $(MODEL) $(if $(ANNOTATIONS),--annotations $(ANNOTATIONS)) \
	  $(if $(IMAGES),--images $(IMAGES)) $(if $(REFERENCE),--reference $(REFERENCE)) $(if $(CONF),--conf $(CONF)) \
	  $(if $(IOU),--iou $(IOU)) $(if $(MAX_DET),--max-det $(MAX_DET)) $(ARGS)

fuzz: $(STAMP)
	FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-100000} $(PY) -m pytest tests/server/test_bad_inputs.py -k fuzz -p no:cacheprovider -q \
	  --durations=1 -o timeout=3600 $(ARGS)

clean-artifacts:
	rm -rf build/artifacts model_repository/*/

clean: clean-artifacts
	rm -rf $(VENV)
