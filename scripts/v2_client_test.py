"""Tandem's Open Inference Protocol routes, driven by NVIDIA's tritonclient[http].

Run by scripts/v2-client-test.sh against a running `tandem serve` (embedded, or in Redis mode
with a worker). Every check is on what tritonclient itself parsed from the server's answers.
"""

import argparse
import base64
import csv
import json
import pathlib
import sys
import time
import urllib.request

import numpy as np
import tritonclient.http as httpclient
from PIL import Image
from tritonclient.utils import InferenceServerException

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32).reshape(3, 1, 1)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32).reshape(3, 1, 1)


def preprocess(path: pathlib.Path, resize: int = 256, crop: int = 224) -> np.ndarray:
    """The models' documented input (models/SOURCES.md): shorter side to 256 (bilinear), center
    crop 224, /255, ImageNet mean and std, NCHW."""
    image = Image.open(path).convert("RGB")
    w, h = image.size
    scale = resize / min(w, h)
    image = image.resize((max(resize, round(w * scale)), max(resize, round(h * scale))), Image.BILINEAR)
    w, h = image.size
    left, top = (w - crop) // 2, (h - crop) // 2
    image = image.crop((left, top, left + crop, top + crop))
    array = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0
    return ((array - MEAN) / STD)[np.newaxis].astype(np.float32)


def best_index(classification: np.ndarray, row: int = 0) -> int:
    """The class index of a row's best `score:index:label` string."""
    first = classification[row][0]
    text = first.decode() if isinstance(first, bytes) else str(first)
    return int(text.split(":")[1])


class Checks:
    def __init__(self, mode: str):
        self.mode = mode
        self.passed = 0

    def check(self, ok: bool, what: str) -> None:
        if not ok:
            print(f"v2_client_test [{self.mode}]: FAILED: {what}", file=sys.stderr)
            sys.exit(1)
        self.passed += 1


def image_input(jpegs: list[bytes], binary: bool) -> httpclient.InferInput:
    data = jpegs if binary else [base64.b64encode(j) for j in jpegs]
    array = np.array(data, dtype=np.object_)
    inp = httpclient.InferInput("image", [len(jpegs)], "BYTES")
    inp.set_data_from_numpy(array, binary_data=binary)
    return inp


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True, help="host:port")
    parser.add_argument("--mode", required=True)
    parser.add_argument("--images", required=True)
    parser.add_argument("--fast", required=True)
    parser.add_argument("--accurate", required=True)
    args = parser.parse_args()
    images = pathlib.Path(args.images)
    c = Checks(args.mode)
    started = time.monotonic()

    golden: dict[tuple[str, str], int] = {}
    with open(images / "golden.csv", newline="") as f:
        for row in csv.DictReader(f):
            golden[(row["file"], row["model"].removesuffix(".onnx"))] = int(row["top1"])
    photos = sorted({file for file, _ in golden})
    c.check(len(photos) == 20, f"20 photos in golden.csv, got {len(photos)}")

    client = httpclient.InferenceServerClient(url=args.url, network_timeout=120.0, connection_timeout=120.0)
    c.check(client.is_server_live(), "is_server_live")
    c.check(client.is_server_ready(), "is_server_ready")
    deadline = time.monotonic() + 60
    while not client.is_model_ready(args.accurate) and time.monotonic() < deadline:
        time.sleep(0.2)  # in Redis mode, until the worker has loaded its model
    for model in (args.fast, args.accurate, "tandem"):
        c.check(client.is_model_ready(model), f"is_model_ready({model})")
    c.check(not client.is_model_ready("no-such-model"), "an unknown model is not ready")

    server = client.get_server_metadata()
    c.check(server["name"] == "tandem", f"server name: {server}")
    c.check({"binary_tensor_data", "classification"} <= set(server["extensions"]), f"extensions: {server}")
    fast_meta = client.get_model_metadata(args.fast)
    c.check(fast_meta["name"] == args.fast and fast_meta["versions"] == ["1"], f"model metadata: {fast_meta}")
    inputs = {i["name"]: i for i in fast_meta["inputs"]}
    c.check(inputs["input"] == {"name": "input", "datatype": "FP32", "shape": [-1, 3, 224, 224]}, f"inputs: {inputs}")
    c.check(inputs["image"]["datatype"] == "BYTES", f"inputs: {inputs}")
    c.check(fast_meta["outputs"][0] == {"name": "probabilities", "datatype": "FP32", "shape": [-1, 1000]},
            f"outputs: {fast_meta['outputs']}")
    versioned = client.get_model_metadata(args.fast, model_version="1")
    c.check(versioned["name"] == args.fast, "metadata at version 1")
    tandem_meta = client.get_model_metadata("tandem")
    c.check([o["name"] for o in tandem_meta["outputs"]] == ["probabilities", "job_id"], f"tandem: {tandem_meta}")
    try:
        client.get_model_metadata("no-such-model")
        c.check(False, "metadata of an unknown model should fail")
    except InferenceServerException as err:
        c.check("unknown model" in err.message(), f"unknown model's error: {err}")

    # The fast model: every photo, as a JPEG and as a tensor, in JSON and in binary.
    for photo in photos:
        jpeg = (images / photo).read_bytes()
        expected = golden[(photo, args.fast)]
        for binary in (False, True):
            request_id = f"{photo}-{'binary' if binary else 'json'}"
            top5 = httpclient.InferRequestedOutput("probabilities", binary_data=binary, class_count=5)
            result = client.infer(args.fast, [image_input([jpeg], binary)], outputs=[top5], request_id=request_id)
            classes = result.as_numpy("probabilities")
            c.check(classes.shape == (1, 5), f"{request_id}: classification shape {classes.shape}")
            c.check(best_index(classes) == expected, f"{request_id}: JPEG top-1 {classes[0][0]!r}, golden {expected}")
            c.check(result.get_response()["id"] == request_id, f"{request_id}: id echoed")

            tensor = httpclient.InferInput("input", [1, 3, 224, 224], "FP32")
            tensor.set_data_from_numpy(preprocess(images / photo), binary_data=binary)
            result = client.infer(args.fast, [tensor], outputs=[top5])
            c.check(best_index(result.as_numpy("probabilities")) == expected, f"{request_id}: tensor top-1")
            rows = httpclient.InferRequestedOutput("probabilities", binary_data=binary)
            probabilities = client.infer(args.fast, [tensor], outputs=[rows]).as_numpy("probabilities")
            c.check(probabilities.shape == (1, 1000) and probabilities.dtype == np.float32,
                    f"{request_id}: probabilities {probabilities.shape} {probabilities.dtype}")
            c.check(int(probabilities.argmax()) == expected, f"{request_id}: argmax of the row")
            c.check(abs(float(probabilities.sum()) - 1.0) < 1e-3, f"{request_id}: the row sums to 1")

    # A batch of four in one request, binary.
    batch = [(images / p).read_bytes() for p in photos[:4]]
    top1 = httpclient.InferRequestedOutput("probabilities", binary_data=True, class_count=1)
    classes = client.infer(args.fast, [image_input(batch, True)], outputs=[top1]).as_numpy("probabilities")
    c.check(classes.shape == (4, 1), f"batch shape {classes.shape}")
    c.check([best_index(classes, i) for i in range(4)] == [golden[(p, args.fast)] for p in photos[:4]], "batch top-1s")

    # The pattern itself: the fast answer now, the job ids with it, the refined answer later.
    jpeg = (images / photos[0]).read_bytes()
    result = client.infer("tandem", [image_input([jpeg], True)],
                          outputs=[httpclient.InferRequestedOutput("probabilities", class_count=5),
                                   httpclient.InferRequestedOutput("job_id")])
    job_ids = result.as_numpy("job_id")
    job_id = job_ids[0].decode() if isinstance(job_ids[0], bytes) else str(job_ids[0])
    c.check(result.get_response()["parameters"]["job_id"] == job_id, f"job_id parameter {result.get_response()}")
    c.check(best_index(result.as_numpy("probabilities")) == golden[(photos[0], args.fast)], "tandem's fast top-1")
    host = args.url if args.url.startswith("http") else f"http://{args.url}"
    with urllib.request.urlopen(f"{host}/job/{job_id}?wait=60", timeout=90) as response:
        job = json.load(response)
    c.check(job["status"] == "completed", f"the tandem job: {job['status']}")
    c.check(job["result"]["class_index"] == golden[(photos[0], args.accurate)], f"refined top-1 {job['result']}")

    # The accurate model, synchronously: queued for the worker and waited for.
    for photo in photos[:5]:
        jpeg = (images / photo).read_bytes()
        out = httpclient.InferRequestedOutput("probabilities", binary_data=True, class_count=5)
        classes = client.infer(args.accurate, [image_input([jpeg], True)], outputs=[out]).as_numpy("probabilities")
        c.check(best_index(classes) == golden[(photo, args.accurate)], f"{photo}: accurate top-1 {classes[0][0]!r}")
    try:
        client.infer(args.accurate, [image_input([jpeg], False)],
                     outputs=[httpclient.InferRequestedOutput("probabilities", binary_data=False)])
        c.check(False, "the accurate model's rows should be refused")
    except InferenceServerException as err:
        c.check("classification" in err.message(), f"accurate rows refused with a reason: {err}")

    # Malformed requests come back as errors tritonclient can read.
    try:
        bad = httpclient.InferInput("input", [1, 3, 100, 100], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 3, 100, 100), dtype=np.float32), binary_data=True)
        client.infer(args.fast, [bad])
        c.check(False, "a wrong tensor shape should fail")
    except InferenceServerException as err:
        c.check(err.status() == "400" and "[N, 3, 224, 224]" in err.message(), f"shape error: {err}")
    try:
        client.infer(args.fast, [image_input([b"not an image"], True)])
        c.check(False, "a non-image should fail")
    except InferenceServerException as err:
        c.check(err.status() == "400" and "not an image" in err.message(), f"non-image error: {err.status()} {err}")
    try:
        client.infer("no-such-model", [image_input([jpeg], True)])
        c.check(False, "an unknown model should fail")
    except InferenceServerException as err:
        c.check(err.status() == "404", f"unknown model's status: {err.status()} {err}")

    print(f"v2_client_test [{args.mode}]: {c.passed} checks passed in {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()
