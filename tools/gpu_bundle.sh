#!/usr/bin/env bash
# What tools/gpu_check.sh needs carried to the GPU machine, in .device/ at the checkout root (git-ignored):
#   bash tools/gpu_bundle.sh [path of the shared device folder's triton-bundle.sh]
# Triton, perf_analyzer and tritonclient from the shared device folder's triton-bundle.sh, plus the wheels of what
# this project imports there and that machine lacks (array-api-compat, pycocotools). A call may carry 64 MiB with
# the checkout (~14 MiB, the official-export fixtures included): numpy 1.26 for the Python backend stub is carried
# as an xz tarball of its wheel's files, less its tests (8 MB instead of the wheel's 18 MB).
set -euo pipefail
bundle=${1:-../shared/device/triton-bundle.sh}
cd "$(dirname "$0")/.."
rm -rf .device && bash "$bundle" .device
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .device/wheels \
  "$(grep -h '^array-api-compat==' requirements-server.txt)" "$(grep -h '^pycocotools==' requirements.txt)"
numpy=$(ls .device/server-wheels/numpy-1.26*.whl)
unpacked=$(mktemp -d) && trap 'rm -rf "$unpacked"' EXIT
python3 -m zipfile -e "$numpy" "$unpacked"
rm -rf "$unpacked"/numpy/*/tests "$unpacked"/numpy/tests
tar -C "$unpacked" -cf - . | xz -6 -T0 > .device/numpy126.tar.xz
rm -rf .device/server-wheels
# setup.sh installs the numpy wheel with pip: unpack the tarball over the machine's numpy instead
python3 - <<'EOF'
from pathlib import Path
setup = Path(".device/setup.sh")
text = setup.read_text()
wheel_line = next(line for line in text.splitlines() if "server-wheels" in line)
setup.write_text(text.replace(wheel_line, """  _np=$(python3 -c 'import numpy, pathlib; print(pathlib.Path(numpy.__file__).parent.parent)')
  rm -rf "$_np"/numpy "$_np"/numpy-*.dist-info "$_np"/numpy.libs && tar -xJf "$_here/numpy126.tar.xz" -C "$_np\""""))
EOF
du -sh .device
