"""RUNTIME=torch: our PyTorch modules as the Triton detector (here on the CPU, FP32, eager; the GPU variant with
FP16 and CUDA graphs is checked on the GPU machine by tests/test_gpu.py), fed by the same weights as the ONNX."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from yolo_triton.models.torch_artifact import load_torch_artifact

from .helpers import SMALL, TORCH_SPECS, V4_TINY, client_for, infer_images
from .test_ensemble import LOW_CONF, assert_same_detections


def test_artifact_round_trip_equals_onnx(onnx_models):
    import onnxruntime as ort

    for spec in (SMALL, V4_TINY):
        model, loaded_spec = load_torch_artifact(onnx_models[spec.name].with_suffix(".pt"))
        assert loaded_spec == spec and model.artifact_meta["random_weights"] == "true"
        x = np.random.default_rng(3).random((2, 3, *spec.input_size), dtype=np.float32)
        with torch.inference_mode():
            ours = model(torch.from_numpy(x)).numpy()
        onnx = ort.InferenceSession(str(onnx_models[spec.name]), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]
        np.testing.assert_allclose(ours, onnx, rtol=1e-4, atol=2e-3)


def test_artifact_refuses_other_files(tmp_path):
    torch.save({"weights": torch.zeros(1)}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="not a yolo_triton.torch"):
        load_torch_artifact(tmp_path / "x.pt")


@pytest.mark.parametrize("spec, reference", [(TORCH_SPECS[0], "small"), (TORCH_SPECS[1], "tiny")], ids=["yolov7", "yolov4_tiny"])
@pytest.mark.parametrize("photo", ["astronaut_square_png", "motorcycle_portrait_jpg"])
def test_torch_detector_ensemble_matches_reference(server, protocol, photos, reference_small, reference_v4, spec, reference, photo):
    module, client = client_for(server, protocol)
    ref = reference_small if reference == "small" else reference_v4[V4_TINY.name]
    result = infer_images(module, client, spec.ensemble_name, [photos[photo], photos["rocket_jpg"]], parameters=LOW_CONF)
    for index, data in enumerate([photos[photo], photos["rocket_jpg"]]):
        expected = ref.detect(data, conf=LOW_CONF["conf_threshold"])
        assert len(expected[1]) > 0
        assert_same_detections(result, expected, index=index, box_tol=0.05, score_tol=2e-4)
