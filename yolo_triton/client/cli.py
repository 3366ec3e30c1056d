"""The command line (``python tools/client.py`` or ``yolo-triton-client``): modes dummy / image / video, text or
``--json`` output in input order, annotated copies, retries and several servers; ``--help`` lists every flag."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image as PILImage

from ..pipeline.decode import SUPPORTED_FORMATS
from .api import (AGNOSTIC_PARAMETER, CLASSES_PARAMETER, CONF_PARAMETER, DEFAULT_MODEL, IOU_PARAMETER, MAX_DET_PARAMETER,
                  MULTI_LABEL_PARAMETER, Detector)
from .draw import draw_detections, dummy_image
from .errors import ClientError, InputError
from .results import Detection, ItemResult, image_size, read_item
from .retry import DEFAULT_RETRY, RetryPolicy
from .transport import PROTOCOLS

IMAGE_SUFFIXES = frozenset(ext for ext, fmt in PILImage.registered_extensions().items() if fmt in SUPPORTED_FORMATS)
VIDEO_FOURCC = {".avi": "MJPG", ".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".mkv": "mp4v"}
DUMMY_NAME = "<dummy>"

DESCRIPTION = """Send images (or a video's frames, or a generated dummy image) to a YOLO ensemble on
Triton and print the detections. The client sends the encoded bytes: the server decodes,
letterboxes, detects, runs NMS and maps the boxes back to the original pixels."""

EPILOG = """modes:
  dummy   a generated 640x480 JPEG: checks the whole pipeline without a photo
  image   files and/or directories (searched recursively for {exts});
          sent as they are
  video   one video file (anything OpenCV reads); each frame is encoded as JPEG and sent

examples:
  %(prog)s image photo.jpg
  %(prog)s image a.jpg b.png --protocol http --conf 0.4 --iou 0.5 --json
  %(prog)s image photos/ --concurrency 8 --batch 4 -o annotated/
  %(prog)s video clip.mp4 -o clip_boxes.mp4 -f 25
  %(prog)s dummy -i
  %(prog)s image photo.jpg -u triton:8001 -s -r ca.pem -p client.key -x client.pem
  %(prog)s image photos/ -u a:8001,b:8001 --retries 20 --retry-deadline 60

exit status: 0 all answered; 1 a file, a frame or the connection failed (each failure on
stderr, the others still printed); 2 bad arguments."""


def build_parser(prog: Optional[str] = None) -> argparse.ArgumentParser:
    exts = " ".join(sorted(IMAGE_SUFFIXES))
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION, epilog=EPILOG.format(exts=exts),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["dummy", "image", "video"], help="what to send (see below)")
    parser.add_argument("inputs", nargs="*", help="image files or directories (image), one video file (video)")
    group = parser.add_argument_group("server")
    group.add_argument("-m", "--model", default=DEFAULT_MODEL, help=f"ensemble to call (default {DEFAULT_MODEL})")
    group.add_argument("-u", "--url", help="host:port (default localhost:8001 for grpc, localhost:8000 for http); "
                                           "several comma-separated (a:8001,b:8001): round robin over the healthy "
                                           "ones; grpc also takes a gRPC target (dns:///name:8001), balanced by gRPC "
                                           "over its addresses")
    group.add_argument("--protocol", choices=PROTOCOLS, default="grpc", help="default grpc")
    group.add_argument("-t", "--client-timeout", type=float, metavar="SECONDS", help="per-request timeout")
    group.add_argument("-i", "--model-info", action="store_true",
                       help="print the model's metadata and config first, its inference statistics last")
    group.add_argument("-v", "--verbose", action="store_true", help="tritonclient's verbose request/response log")
    group = parser.add_argument_group("retries (server unreachable or restarting, model not ready, a dead backend "
                                      "instance; never a bad input)")
    group.add_argument("--retries", type=int, default=DEFAULT_RETRY.attempts - 1, metavar="N",
                       help=f"retries per request after the first try (default {DEFAULT_RETRY.attempts - 1}; 0: none)")
    group.add_argument("--retry-deadline", type=float, default=DEFAULT_RETRY.deadline, metavar="SECONDS",
                       help=f"no retry starts later than this after a request's first try (default "
                            f"{DEFAULT_RETRY.deadline:g}; 0: no deadline)")
    group.add_argument("--backoff", type=float, default=DEFAULT_RETRY.initial_backoff, metavar="SECONDS",
                       help=f"first wait before a retry, doubled each time (default {DEFAULT_RETRY.initial_backoff:g})")
    group.add_argument("--max-backoff", type=float, default=DEFAULT_RETRY.max_backoff, metavar="SECONDS",
                       help=f"longest wait between retries (default {DEFAULT_RETRY.max_backoff:g})")
    group.add_argument("--cooldown", type=float, default=2.0, metavar="SECONDS",
                       help="with several -u servers: how long a failed server is skipped before a health check "
                            "(default 2)")
    group = parser.add_argument_group("TLS (gRPC; HTTP over https needs a TLS proxy in front of Triton)")
    group.add_argument("-s", "--ssl", action="store_true", help="connect with TLS")
    group.add_argument("-r", "--root-certificates", metavar="PEM", help="CA certificate(s) to trust")
    group.add_argument("-p", "--private-key", metavar="PEM", help="client private key (mutual TLS)")
    group.add_argument("-x", "--certificate-chain", metavar="PEM", help="client certificate chain (mutual TLS)")
    group = parser.add_argument_group("detection (Triton request parameters; default: the model config's)")
    group.add_argument("--conf", type=float, metavar="T", help=f"confidence threshold ({CONF_PARAMETER})")
    group.add_argument("--iou", type=float, metavar="T", help=f"NMS IoU threshold ({IOU_PARAMETER})")
    group.add_argument("--max-det", type=int, metavar="N", help=f"most boxes per image ({MAX_DET_PARAMETER})")
    group.add_argument("--classes", type=int, nargs="+", metavar="ID",
                       help=f"keep only these class ids, as detect.py --classes 0 2 ({CLASSES_PARAMETER})")
    group.add_argument("--agnostic-nms", action="store_const", const=True,
                       help=f"one NMS across classes, as detect.py --agnostic-nms ({AGNOSTIC_PARAMETER})")
    group.add_argument("--multi-label", action="store_const", const=True,
                       help=f"a box may carry every class above the threshold, as test.py ({MULTI_LABEL_PARAMETER})")
    group = parser.add_argument_group("throughput")
    group.add_argument("--concurrency", type=int, default=4, metavar="N", help="requests in flight (default 4)")
    group.add_argument("--batch", type=int, default=1, metavar="N",
                       help="images per request (default 1; at most the model's max batch size)")
    group.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                       help="progress bar on stderr (default: when stderr is a terminal and there is more than one item)")
    group = parser.add_argument_group("output")
    group.add_argument("--json", action="store_true",
                       help="one JSON object per image or frame: file, (frame,) width, height, detections")
    group.add_argument("-o", "--output", metavar="PATH",
                       help="annotated copy: a file for one image or the video (.mp4 mp4v, .avi MJPG), "
                            "a directory for several images")
    group.add_argument("-f", "--fps", type=float, help="frame rate of the output video (default: the input's, else 24)")
    return parser


def _check_args(parser: argparse.ArgumentParser, args) -> None:
    if args.mode == "dummy" and args.inputs:
        parser.error("dummy mode takes no inputs")
    if args.mode == "image" and not args.inputs:
        parser.error("image mode needs at least one file or directory")
    if args.mode == "video" and len(args.inputs) != 1:
        parser.error("video mode takes exactly one video file")
    if (args.root_certificates or args.private_key or args.certificate_chain) and not args.ssl:
        parser.error("-r/-p/-x are TLS files: add -s")
    if bool(args.private_key) != bool(args.certificate_chain):
        parser.error("mutual TLS needs both -p (private key) and -x (certificate chain)")
    if args.concurrency < 1 or args.batch < 1:
        parser.error("--concurrency and --batch must be at least 1")
    if args.fps is not None and args.fps <= 0:
        parser.error("-f/--fps must be positive")
    if args.retries < 0 or args.retry_deadline < 0 or args.cooldown < 0:
        parser.error("--retries, --retry-deadline and --cooldown must be >= 0")
    if not 0 <= args.backoff <= args.max_backoff:
        parser.error("--backoff must be between 0 and --max-backoff")


def retry_policy(args) -> RetryPolicy:
    """The --retries/--retry-deadline/--backoff/--max-backoff flags as a RetryPolicy."""
    if args.retries == 0:
        return RetryPolicy.disabled()
    return RetryPolicy(attempts=args.retries + 1, initial_backoff=args.backoff, max_backoff=args.max_backoff,
                       deadline=args.retry_deadline or None)


def expand_inputs(inputs: Sequence[str]) -> List[Path]:
    """Files as given (whatever their name: the server says if one is not an image); directories → the image
    files under them, sorted."""
    paths: List[Path] = []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            paths += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            paths.append(path)
    return paths


def output_paths(paths: Sequence[Path], output: Optional[str]) -> Dict[int, Path]:
    """Where each annotated image goes: ``output`` itself for one image (unless it is a directory), else
    ``output/<name>``, made unique when two inputs share a name."""
    if not output:
        return {}
    target = Path(output)
    if len(paths) == 1 and not target.is_dir() and not output.endswith(os.sep):
        return {0: target}
    taken, out = set(), {}
    for index, path in enumerate(paths):
        candidate, n = target / path.name, 1
        while candidate in taken:
            candidate, n = target / f"{path.stem}_{n}{path.suffix}", n + 1
        taken.add(candidate)
        out[index] = candidate
    return out


def format_text(label: str, detections: Sequence[Detection]) -> str:
    lines = [f"{label}: {len(detections)} detections"]
    lines += [f"  {d.class_id:>3} {d.name:<15} {d.score:.3f}  x1={d.x1:.1f} y1={d.y1:.1f} x2={d.x2:.1f} y2={d.y2:.1f}"
              for d in detections]
    return "\n".join(lines)


def format_json(label: str, size: Optional[Tuple[int, int]], detections: Sequence[Detection], **extra) -> str:
    width, height = size or (None, None)
    record = {"file": label, **extra, "width": width, "height": height, "detections": [d.to_dict() for d in detections]}
    return json.dumps(record)


class _Printer:
    """Prints results in input order while requests complete in any order, with an optional tqdm bar."""

    def __init__(self, total: Optional[int], enabled: Optional[bool], unit: str):
        from tqdm import tqdm

        show = enabled if enabled is not None else (sys.stderr.isatty() and (total is None or total > 1))
        self.bar = tqdm(total=total, unit=unit, file=sys.stderr, disable=not show, dynamic_ncols=True)
        self.waiting: Dict[int, ItemResult] = {}
        self.next = 0
        self.failed = 0

    def out(self, text: str, error: bool = False) -> None:
        self.bar.write(text, file=sys.stderr if error else sys.stdout)

    def ordered(self, results: Iterable[ItemResult]) -> Iterator[ItemResult]:
        for result in results:
            self.bar.update(1)
            self.waiting[result.index] = result
            while self.next in self.waiting:
                yield self.waiting.pop(self.next)
                self.next += 1

    def close(self) -> None:
        self.bar.close()


def _report_error(printer: _Printer, label: str, error: ClientError, as_json: bool, **extra) -> None:
    printer.failed += 1
    printer.out(f"{label}: error: {error}", error=True)
    if as_json:
        printer.out(json.dumps({"file": label, **extra, "error": str(error)}))


def _annotate_to(path: Path, data: bytes, detections: Sequence[Detection]) -> None:
    import cv2

    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise InputError("cannot decode the image to draw on it")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        ok = cv2.imwrite(str(path), draw_detections(image, detections))
    except cv2.error:
        ok = False
    if not ok:
        raise InputError(f"cannot write the annotated image {path} (use a .jpg, .png, .bmp or .webp name)")


def detection_options(args) -> dict:
    """The request parameters the command line set (``Detector.parameters``' keywords)."""
    return {"conf": args.conf, "iou": args.iou, "max_det": args.max_det, "classes": args.classes,
            "agnostic_nms": args.agnostic_nms, "multi_label": args.multi_label}


def run_images(detector: Detector, args, items: Sequence[Union[Path, bytes]], labels: Sequence[str]) -> int:
    outputs = output_paths([Path(l) for l in labels], args.output)
    printer = _Printer(len(items), args.progress, "img")
    stream = detector.stream([str(i) if isinstance(i, Path) else i for i in items], concurrency=args.concurrency,
                             batch_size=args.batch, **detection_options(args))
    try:
        for result in printer.ordered(stream):
            label = labels[result.index]
            if not result.ok:
                _report_error(printer, label, result.error, args.json)
                continue
            item = items[result.index]
            printer.out(format_json(label, image_size(item), result.detections) if args.json
                        else format_text(label, result.detections))
            if result.index in outputs:
                try:
                    _annotate_to(outputs[result.index], read_item(item), result.detections)
                except InputError as error:
                    _report_error(printer, label, error, False)
    finally:
        printer.close()
    return 1 if printer.failed else 0


def run_video(detector: Detector, args) -> int:
    import cv2

    source = args.inputs[0]
    capture = cv2.VideoCapture(source)
    if not capture.isOpened():
        print(f"{source}: error: cannot open the video", file=sys.stderr)
        return 1
    fps = args.fps or capture.get(cv2.CAP_PROP_FPS) or 24.0
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    frames: Dict[int, np.ndarray] = {}  # frames in flight, kept for drawing; at most concurrency × batch + reordering

    def encoded():
        index = 0
        while True:
            ok, frame = capture.read()
            if not ok:
                return
            frames[index] = frame
            index += 1
            ok, buffer = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 95])
            yield buffer.tobytes()  # the client's one re-encode: the server takes encoded images only

    writer = None
    printer = _Printer(count, args.progress, "frame")
    try:
        stream = detector.stream(encoded(), concurrency=args.concurrency, batch_size=args.batch,
                                 **detection_options(args))
        for result in printer.ordered(stream):
            frame = frames.pop(result.index)
            height, width = frame.shape[:2]
            if not result.ok:
                _report_error(printer, f"{source}#{result.index}", result.error, args.json)
            elif args.json:
                printer.out(format_json(source, (width, height), result.detections, frame=result.index))
            else:
                printer.out(format_text(f"{source} frame {result.index}", result.detections))
            if args.output:
                if writer is None:
                    fourcc = VIDEO_FOURCC.get(Path(args.output).suffix.lower(), "mp4v")
                    writer = cv2.VideoWriter(args.output, cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
                    if not writer.isOpened():
                        printer.out(f"{args.output}: error: OpenCV cannot write this video ({fourcc}); "
                                    "try .avi (MJPG) or .mp4 (mp4v)", error=True)
                        return 1
                writer.write(draw_detections(frame, result.detections or []))
    finally:
        printer.close()
        capture.release()
        if writer is not None:
            writer.release()
    if printer.next == 0:
        print(f"{source}: error: no frame could be read", file=sys.stderr)
        return 1
    return 1 if printer.failed else 0


def _print_json_block(title: str, value: dict, as_json: bool) -> None:
    print(json.dumps({title: value}) if as_json else f"{title}:\n{json.dumps(value, indent=2)}")


def main(argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> int:
    try:
        return _main(argv, prog)
    except BrokenPipeError:  # `... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _main(argv: Optional[Sequence[str]], prog: Optional[str]) -> int:
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # gRPC's own handshake logs: our error message says it once
    parser = build_parser(prog)
    args = parser.parse_intermixed_args(argv)  # files may come before and after flags
    _check_args(parser, args)
    try:
        detector = Detector(args.url, args.model, args.protocol, ssl=args.ssl, root_certificates=args.root_certificates,
                            private_key=args.private_key, certificate_chain=args.certificate_chain,
                            timeout=args.client_timeout, concurrency=args.concurrency, verbose=args.verbose,
                            retry=retry_policy(args), cooldown=args.cooldown)
    except ClientError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    with detector:
        try:
            if args.batch > 1 and args.batch > detector.max_batch_size:
                print(f"error: --batch {args.batch} is above {args.model}'s max batch size {detector.max_batch_size}",
                      file=sys.stderr)
                return 2
            if args.model_info:
                _print_json_block("model metadata", detector.model_metadata(), args.json)
                _print_json_block("model config", detector.model_config(), args.json)
            if args.mode == "dummy":
                status = run_images(detector, args, [dummy_image()], [DUMMY_NAME])
            elif args.mode == "image":
                paths = expand_inputs(args.inputs)
                if not paths:
                    print(f"error: no image files ({' '.join(sorted(IMAGE_SUFFIXES))}) in {' '.join(args.inputs)}",
                          file=sys.stderr)
                    return 1
                status = run_images(detector, args, paths, [str(p) for p in paths])
            else:
                status = run_video(detector, args)
            if args.model_info:
                _print_json_block("inference statistics", detector.statistics(), args.json)
        except ClientError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
    return status

