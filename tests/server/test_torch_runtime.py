"""RUNTIME=torch: our PyTorch modules as the Triton detector (here on the CPU, FP32, eager; the GPU variant with
FP16 and CUDA graphs is checked on the GPU machine by tests/test_gpu.py), fed by the same weights as the ONNX."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from yolo_triton.models.torch_artifact import load_torch_artifact

from ..helpers import SMALL, TORCH_SPECS, V4_TINY, client_for, infer_images
from ..helpers import LOW_CONF, assert_same_detections


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


def test_step_times_beside_triton_statistics(tmp_path, monkeypatch, onnx_models, photos):
    """YOLO_TRITON_STEP_TIMES: the torch detector writes one row per execute; tools/step_times.py counts the same
    executions and images as Triton's own statistics for the same load, and splits the execute into phases."""
    import csv
    import json

    import tritonclient.grpc as grpcclient

    from yolo_triton.placement import PRESETS
    from yolo_triton.repository import write_repository
    from yolo_triton.serving.triton import TritonServer


    from tools import step_times

    spec = TORCH_SPECS[0]
    repository = write_repository(tmp_path / "repository", [spec], PRESETS["cpu"].replace(runtime="torch"),
                                  torch_files={spec.name: onnx_models[SMALL.name].with_suffix(".pt")})
    folder = tmp_path / "steps"
    monkeypatch.setenv("YOLO_TRITON_STEP_TIMES", str(folder))
    with TritonServer(repository, log_path=tmp_path / "server.log") as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        (tmp_path / "before.json").write_text(json.dumps(client.get_inference_statistics(as_json=True)))
        sent = 0
        for count in (1, 2, 3):
            infer_images(grpcclient, client, spec.ensemble_name, [photos["rocket_jpg"]] * count)
            sent += count
        (tmp_path / "after.json").write_text(json.dumps(client.get_inference_statistics(as_json=True)))
    assert step_times.main([str(folder), "--skip-s", "0", "--stats-before", str(tmp_path / "before.json"),
                            "--stats-after", str(tmp_path / "after.json"), "--server-log", str(tmp_path / "server.log"),
                            "--out", str(tmp_path / "steps.json")]) == 0
    whole = json.loads((tmp_path / "steps.json").read_text())
    assert set(whole["server_log_pool_warnings"].values()) == {0}  # the log was read: a CPU server has no pool
    report = whole[spec.name]
    ours, triton = report["execute"], report["triton"]
    assert ours["executions"] == triton["executions"] == 3  # requests sent one after another: one execute each
    assert round(ours["images_per_execution"] * ours["executions"]) == sent
    assert set(ours["phases_ms"]) == {"inputs", "infer", "responses"}
    assert 0 < ours["execute_ms"] <= triton["compute_infer_ms"] * 1.05  # our execute runs inside Triton's round trip
    assert report["backend_overhead_ms"] == pytest.approx(triton["compute_infer_ms"] - ours["execute_ms"], abs=1e-3)
    rows = [r for f in folder.glob(f"{spec.name}.*.csv") for r in csv.DictReader(open(f))]  # read apart from the tool
    longest = max(rows, key=lambda r: sum(float(r[p]) for p in ("inputs", "infer", "responses")))
    assert ours["execute_ms_max"] == pytest.approx(sum(float(longest[p]) for p in ("inputs", "infer", "responses")), abs=2e-3)
    assert ours["slowest_execution"] == longest and ours["execute_ms"] <= ours["execute_ms_p99"] <= ours["execute_ms_max"]


def test_postprocess_batch_on_the_host_is_the_cpu_postprocess(onnx_models, photos, monkeypatch):
    """Few rows pass objectness: only those leave the GPU, and each image comes out as the CPU postprocess of its
    whole grid makes it, with the images' own thresholds and options (torch on the CPU here: the host's way needs
    no torchvision, and the GPU's way is not taken). Images with more rows than the host takes go the GPU's way,
    each by its own count."""
    import dataclasses

    import onnxruntime as ort

    from yolo_triton import layouts, specs
    from yolo_triton.boxes import LetterboxMeta
    from yolo_triton.pipeline import gpu_postprocess as gpu_post, postprocess as post, preprocess as pre
    from yolo_triton.specs import DetectionParams

    def no_gpu_way(*args):
        raise AssertionError("the GPU's way was taken")

    monkeypatch.setattr(gpu_post, "_finish_on_gpu", no_gpu_way)
    names = ["astronaut_square_png", "rocket_jpg", "coffee_landscape_jpg", "motorcycle_portrait_jpg", "chelsea_tiny_jpg"]
    tensors, metas = zip(*(pre.preprocess_image(photos[n], SMALL.input_size) for n in names))
    predictions = ort.InferenceSession(str(onnx_models[SMALL.name]), providers=["CPUExecutionProvider"]).run(
        None, {"images": np.stack(tensors)})[0]
    params = [DetectionParams(conf_threshold=(0.02, 0.05, 0.9)[i % 3], iou_threshold=(0.3, 0.45)[i % 2],
                              max_detections=(300, 3)[i % 2], agnostic_nms=i == 1, multi_label=i == 3)
              for i in range(len(names))]
    found = np.unique(layouts.decode(specs.LAYOUT_RAW_GRID, {specs.DETECTOR_OUTPUT: predictions[4]},
                                     params[4].conf_threshold, None).classes)
    params[4] = dataclasses.replace(params[4], classes=tuple(int(c) for c in found[:2]))
    ours = gpu_post.postprocess_batch(torch.from_numpy(predictions), np.stack([m.to_array() for m in metas]), params)
    assert len(ours) == len(names)
    for index, meta in enumerate(metas):
        expected = post.postprocess(predictions[index], meta, params[index])
        assert len(ours[index]) == len(expected) and (len(expected) > 0) == (params[index].conf_threshold < 0.9)
        np.testing.assert_array_equal(ours[index].classes, expected.classes)
        np.testing.assert_array_equal(ours[index].scores, expected.scores)
        np.testing.assert_array_equal(ours[index].boxes, expected.boxes)
    # each image by its own count: those above the limit, and only those, to the GPU's way (a stand-in here,
    # finishing each image it gets as the CPU path would), the answers back in the batch's order
    counts = [int((p[:, 4] > c.conf_threshold).sum()) for p, c in zip(predictions, params)]
    limit = sorted(counts)[2]
    given = []

    def gpu_way_stand_in(predictions_in, conf, metas_in, params_in):
        given.append(([float(c) for c in conf], [m.tolist() for m in metas_in], list(params_in)))
        return [post.postprocess(p.numpy(), LetterboxMeta.from_array(m), c) for p, m, c in zip(predictions_in, metas_in, params_in)]

    monkeypatch.setattr(gpu_post, "_finish_on_gpu", gpu_way_stand_in)
    monkeypatch.setattr(gpu_post, "HOST_ROWS_PER_IMAGE", limit)
    ours = gpu_post.postprocess_batch(torch.from_numpy(predictions), np.stack([m.to_array() for m in metas]), params)
    above = [i for i, count in enumerate(counts) if count > limit]
    assert above and len(above) < len(names) and len(given) == 1
    assert given[0][0] == [pytest.approx(params[i].conf_threshold) for i in above]
    assert given[0][1] == [metas[i].to_array().tolist() for i in above] and given[0][2] == [params[i] for i in above]
    for index, meta in enumerate(metas):
        expected = post.postprocess(predictions[index], meta, params[index])
        np.testing.assert_array_equal(ours[index].boxes, expected.boxes)
        np.testing.assert_array_equal(ours[index].classes, expected.classes)


@pytest.mark.parametrize("seed", range(5))
def test_nms_chunks_cover_every_image_once_within_budget(seed):
    """The GPU postprocess's NMS chunks (CPU arithmetic, no torchvision needed): consecutive, each image exactly
    once, one IoU threshold per chunk, within the budget unless an image alone exceeds it, and no two
    neighbouring chunks that could have been one."""
    from yolo_triton.pipeline.gpu_postprocess import nms_chunks

    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 120, 40).tolist()
    thresholds = rng.choice([0.45, 0.45, 0.45, 0.6], 40).tolist()
    budget = 150
    chunks = nms_chunks(counts, thresholds, budget)
    assert [i for a, b in chunks for i in range(a, b)] == list(range(len(counts)))
    for start, stop in chunks:
        assert len(set(thresholds[start:stop])) == 1
        assert sum(counts[start:stop]) <= budget or stop - start == 1
    for (a, b), _ in zip(chunks, chunks[1:]):  # greedy: the next image did not fit, or changed threshold
        assert thresholds[b] != thresholds[a] or sum(counts[a : b + 1]) > budget
    assert nms_chunks([], []) == []


def test_top_candidates_per_image_as_the_cpu_sort():
    """At most ``limit`` candidates per image, the best by score, ties in grid order: as the CPU path's
    ``np.argsort(-scores, kind="stable")[:limit]`` image by image."""
    from yolo_triton.pipeline.gpu_postprocess import top_candidates_per_image

    rng = np.random.default_rng(0)
    image_idx = np.sort(rng.integers(0, 6, 400))
    scores = rng.integers(0, 50, 400).astype(np.float32) / 50  # many ties
    counts = np.bincount(image_idx, minlength=7)
    picked = top_candidates_per_image(torch.from_numpy(image_idx), torch.from_numpy(scores), torch.from_numpy(counts), 20).numpy()
    expected = []
    for image in range(7):
        members = np.flatnonzero(image_idx == image)
        expected.extend(members[np.argsort(-scores[members], kind="stable")][:20])
    np.testing.assert_array_equal(picked, expected)
