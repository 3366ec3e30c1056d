"""The committed model repository is exactly what the spec generates, and the configs agree with each other."""
from __future__ import annotations

from pathlib import Path

import pytest

from yolo_triton import specs
from yolo_triton.repository import repository_files, write_repository

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("spec", [specs.YOLOV7, specs.YOLOV4], ids=lambda s: s.name)
def test_committed_repository_is_generated_from_the_spec(tmp_path, spec):
    write_repository(tmp_path, [spec])
    for relative, text in repository_files(spec).items():
        committed = ROOT / "model_repository" / relative
        assert committed.exists(), f"{relative} missing: run `make repository`"
        assert committed.read_text() == (tmp_path / relative).read_text(), f"{relative} is stale: run `make repository`"


def test_detector_dims_follow_the_spec():
    spec = specs.YOLOV7.with_overrides(input_size=(256, 320))
    files = repository_files(spec)
    assert "dims: [ 3, 256, 320 ]" in files["yolov7/config.pbtxt"]
    # (256/8·320/8 + 256/16·320/16 + 256/32·320/32) · 3 anchors
    assert "dims: [ 5040, 85 ]" in files["yolov7/config.pbtxt"] and spec.num_candidates == 5040
    assert files["yolov7_postprocess/labels.txt"].splitlines() == list(specs.COCO80_NAMES)


def test_bad_spec_is_refused():
    with pytest.raises(ValueError, match="multiple of the largest stride"):
        specs.YOLOV7.with_overrides(input_size=(250, 320))
