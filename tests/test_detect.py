"""``rsir detect``: a DOTA-style OBB detector over every image of an archive, as a Ray Data job.

(a) a randomly initialised ultralytics OBB model (built from ultralytics' own model YAML,
no download, no network) through the whole job on real LEVIR-CD / DSIFN images; (b) a
detector double returning real ultralytics ``Results`` with known oriented boxes checks
where the boxes land, in image fractions, filtered by score and capped.
"""

from __future__ import annotations

import hashlib
import json
import math
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from rsir.data.detection import DetectOptions, YoloLoader, import_ultralytics, results_to_objects
from rsir.data.schema import SHARD_SCHEMA, encode_image, make_row, read_table, write_shards
from rsir.models.galr import DOTA_CATEGORIES

try:
    import_ultralytics()  # offline from its first import on (YOLO_OFFLINE)
except ImportError:
    pytest.skip("the detect extra: pip install 'rsir[detect]'", allow_module_level=True)
ray = pytest.importorskip("ray")

# The doubles below run inside Ray actors: ship this module's code with them.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

DOTAV1_NAMES = {  # ultralytics' DOTAv1.yaml, as its -obb models carry them
    0: "plane", 1: "ship", 2: "storage tank", 3: "baseball diamond", 4: "tennis court",
    5: "basketball court", 6: "ground track field", 7: "harbor", 8: "bridge", 9: "large vehicle",
    10: "small vehicle", 11: "helicopter", 12: "roundabout", 13: "soccer ball field",
    14: "swimming pool",
}
CPU_ACTOR = dict(concurrency=1, num_cpus=1.0, num_gpus=0.0)
LOOPBACK = ("127.", "::1", "localhost", "0.0.0.0")


# ---------------------------------------------------------------------------------------
# No network: every non-loopback lookup or connection is recorded and refused
# ---------------------------------------------------------------------------------------


def _is_loopback(host: object) -> bool:
    return isinstance(host, str) and (host.startswith(LOOPBACK) or host == "")


def block_network(record: list[str] | Path) -> None:
    """Refuse (OSError) and record every name lookup or connection off this host."""

    def note(what: str) -> None:
        if isinstance(record, Path):
            with open(record, "a") as f:
                f.write(what + "\n")
        else:
            record.append(what)

    real_getaddrinfo, real_connect = socket.getaddrinfo, socket.socket.connect

    def getaddrinfo(host, *args, **kwargs):
        if _is_loopback(host):
            return real_getaddrinfo(host, *args, **kwargs)
        note(f"getaddrinfo {host}")
        raise OSError(f"network blocked by the test: {host}")

    def connect(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if self.family == socket.AF_UNIX or _is_loopback(host):
            return real_connect(self, address)
        note(f"connect {address}")
        raise OSError(f"network blocked by the test: {address}")

    socket.getaddrinfo = getaddrinfo
    socket.socket.connect = connect


@dataclass(frozen=True)
class OfflineYoloLoader:
    """The real loader, run in an actor whose network is blocked; attempts go to ``log``."""

    inner: YoloLoader
    log: str

    def __call__(self, device: str):
        block_network(Path(self.log))
        return self.inner(device)


# ---------------------------------------------------------------------------------------
# Archives of real images
# ---------------------------------------------------------------------------------------


def _real_rows(shared_data: Path) -> list[dict]:
    """LEVIR-CD pairs (t1 = A, t2 = B) and DSIFN single images, 256 x 256 RGB, plus a
    row whose image does not decode."""
    from PIL import Image

    root = shared_data / "images" / "levircd_dsifn_samples"
    rows = []
    for dataset in ("LEVIR", "DSIFN"):
        for a in sorted((root / f"samples_{dataset}" / "A").glob("*.png")):
            with Image.open(a) as img:
                if img.size != (256, 256) or img.mode != "RGB":
                    continue
            b = a.parent.parent / "B" / a.name
            pair = dataset == "LEVIR"
            rows.append(make_row(
                id=f"{dataset}/{a.stem}", split="test" if len(rows) % 3 else "train",
                image=a.read_bytes(), image_t2=b.read_bytes() if pair else None,
                captions=[{"text": f"scene {len(rows)}", "lang": "en"}],
                changed=True if pair else None, class_name="urban", attributes={"source": dataset},
                source=str(a.relative_to(root))))
    rows.append(make_row(id="corrupt", split="train", image=b"not an image", source="x.png"))
    return rows


def _tables_by_shard(path: Path) -> list:
    return [pq.read_table(p, schema=SHARD_SCHEMA) for p in sorted(path.glob("*.parquet"))]


def _random_obb_weights(path: Path, images: list[np.ndarray]) -> None:
    """A randomly initialised YOLO11n-OBB with DOTA-v1's 15 classes, from ultralytics' own
    ``yolo11n-obb.yaml``. A random detection head scores every anchor about the same and
    below any threshold, so: BatchNorm statistics from ``images`` and the class logits
    scaled and shifted until about 0.5% of the anchors score above 0.5 (still random)."""
    import torch
    from ultralytics.nn.tasks import OBBModel

    YOLO = import_ultralytics().YOLO
    torch.manual_seed(0)
    base = YOLO("yolo11n-obb.yaml")
    net = OBBModel(base.model.yaml, nc=15, verbose=False)
    net.args, net.task, net.names = base.model.args, "obb", dict(DOTAV1_NAMES)
    x = torch.stack([torch.from_numpy(np.array(i)).permute(2, 0, 1).float() / 255
                     for i in images])
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # the plain average over the calibration batch
    net.train()
    with torch.no_grad():
        net(x)
    net.eval()
    head, logits = net.model[-1], []
    hooks = [s[-1].register_forward_hook(lambda m, i, o: logits.append(o - m.bias.view(1, -1, 1, 1)))
             for s in head.cv3]
    with torch.no_grad():
        for s in head.cv3:
            s[-1].weight.mul_(30.0)
        net(x)
        cut = torch.quantile(torch.cat([v.flatten() for v in logits]), 0.995)
        for s in head.cv3:
            s[-1].bias.fill_(float(-cut))
    for h in hooks:
        h.remove()
    base.model = net
    base.save(str(path))


@pytest.fixture(scope="module")
def real_archive(shared_data, tmp_path_factory):
    """The real rows in several shards, and random OBB weights built with the network off."""
    from rsir.data.schema import decode_image

    root = tmp_path_factory.mktemp("detect")
    rows = _real_rows(shared_data)
    write_shards(rows, root / "in", max_bytes=1_500_000)
    attempts: list[str] = []
    real = socket.getaddrinfo, socket.socket.connect
    block_network(attempts)
    try:
        _random_obb_weights(root / "random-obb.pt",
                            [decode_image(r["image"]) for r in rows if r["id"] != "corrupt"])
    finally:
        socket.getaddrinfo, socket.socket.connect = real
    assert attempts == []  # building the model from ultralytics' YAML needs no network
    return root, rows


@pytest.mark.ray
@pytest.mark.slow
def test_random_ultralytics_obb_model_through_the_whole_job(ray_session, real_archive, tmp_path):
    from rsir.data.detection import detector_image
    from rsir.enrich import ActorResources, detect

    root, rows = real_archive
    weights = root / "random-obb.pt"
    options = DetectOptions(score_threshold=0.25, max_objects=8, image_size=256)
    network_log = tmp_path / "network.log"
    summary = detect(root / "in", tmp_path / "out", weights=weights, categories=DOTA_CATEGORIES,
                     options=options, resources=ActorResources(**CPU_ACTOR), batch_size=1,
                     load_model=OfflineYoloLoader(YoloLoader(str(weights)), str(network_log)))
    assert not network_log.exists()  # no lookup, no connection from the actors

    inputs, outputs = _tables_by_shard(root / "in"), _tables_by_shard(tmp_path / "out")
    assert len(inputs) >= 3 and len(outputs) == len(inputs)
    assert summary["rows"] == len(rows) and summary["quarantined"] == 1
    for t_in, t_out in zip(inputs, outputs):  # shard by shard, rows in their order
        for name in SHARD_SCHEMA.names:
            if name != "objects":
                assert t_out.column(name).equals(t_in.column(name)), name

    # The objects are the model's own predictions on each row's first date, converted.
    model = YoloLoader(str(weights))("cpu")
    categories = {i: n.replace(" ", "-") for i, n in DOTAV1_NAMES.items()}
    got = {r["id"]: r["objects"] for r in read_table(tmp_path / "out").to_pylist()}
    n_objects = 0
    for row in rows:
        if row["id"] == "corrupt":
            assert got["corrupt"] == []
            continue
        [result] = model.predict([detector_image(row["image"], row["bands"])], conf=0.25, max_det=8,
                                 imgsz=256, device="cpu", verbose=False)
        want = results_to_objects(result, categories, 0.25, 8)
        assert [o["category"] for o in got[row["id"]]] == [o["category"] for o in want], row["id"]
        for g, w in zip(got[row["id"]], want):
            assert g["box"] == pytest.approx(w["box"], abs=1e-5)
            assert g["score"] == pytest.approx(w["score"], abs=1e-5)
            assert all(0.0 <= v <= 1.0 for v in g["box"]) and g["score"] >= 0.25
        n_objects += len(want)
    assert n_objects > 0  # the calibrated random head does detect something

    quarantine = pq.read_table(tmp_path / "out" / "_meta" / "quarantine.parquet").to_pylist()
    assert [(q["dataset"], q["record"]) for q in quarantine] == [("detect", "corrupt")]
    assert quarantine[0]["reason"].startswith("detect: undecodable image")
    meta = json.loads((tmp_path / "out" / "_meta" / "detect.json").read_text())
    assert meta["weights"] == "random-obb.pt"
    assert meta["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert (meta["score_threshold"], meta["max_objects"], meta["image_size"]) == (0.25, 8, 256)


@dataclass(frozen=True)
class KnownBoxes:
    """A detector double: for an image whose red value at (0, 0) is ``key``, the oriented
    boxes ``(cx, cy, w, h, angle, score, class)`` in pixels, as ultralytics ``Results``."""

    boxes: dict[int, list[tuple[float, ...]]] = field(default_factory=dict)
    names: dict[int, str] = field(default_factory=lambda: dict(DOTAV1_NAMES))

    def __call__(self, device: str) -> KnownBoxes:
        return self

    def predict(self, source, **kwargs):
        import torch
        from ultralytics.engine.results import Results

        out = []
        for image in source:  # BGR, as ultralytics takes numpy images
            rows = self.boxes.get(int(image[0, 0, 2]), [])
            obb = torch.tensor(rows, dtype=torch.float32).reshape(-1, 7)
            out.append(Results(image, path="", names=self.names, obb=obb))
        return out


def _solid(red: int, height: int, width: int) -> bytes:
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 0] = red
    image[..., 2] = 255 - red  # blue differs, so reading BGR as RGB would miss every key
    return encode_image(image)


@pytest.mark.ray
def test_known_boxes_land_in_their_rows_as_image_fractions(ray_session, tmp_path):
    from rsir.enrich import ActorResources, detect

    # 200 wide x 100 high: pixel boxes / (200, 100)
    boxes = {
        10: [(50, 25, 20, 10, 0.0, 0.9, 9),  # axis-aligned: [40, 20, 60, 30]
             (100, 50, 40, 10, math.pi / 2, 0.8, 0),  # turned 90°: [95, 30, 105, 70]
             (60, 60, 20 * math.sqrt(2), 20 * math.sqrt(2), math.pi / 4, 0.7, 2),  # [40, 40, 80, 80]
             (190, 50, 40, 20, 0.0, 0.6, 14),  # past the right edge: clipped to [170, 40, 200, 60]
             (100, 50, 10, 10, 0.0, 0.2, 1),  # below the score threshold
             (500, 500, 10, 10, 0.0, 0.95, 1)],  # wholly outside the image
        20: [(10 + 10 * i, 10, 4, 4, 0.0, 0.3 + 0.05 * i, 10) for i in range(6)],  # 6 > max 4
        30: [(100, 50, 20, 20, 0.0, 0.99, 3)],  # only on the second date: must not appear
    }
    rows = [
        make_row(id="single", split="train", image=_solid(10, 100, 200)),
        make_row(id="crowded", split="val", image=_solid(20, 100, 200),
                 objects=[{"box": [0, 0, 1, 1], "category": "ship", "score": 1.0}]),
        make_row(id="pair", split="test", image=_solid(40, 100, 200), image_t2=_solid(30, 100, 200),
                 changed=True),
        make_row(id="broken", split="test", image=b"\x89PNG\r\n\x1a\n truncated"),
    ]
    write_shards(rows[:2], tmp_path / "in", prefix="a")
    write_shards(rows[2:], tmp_path / "in", prefix="b")
    weights = tmp_path / "double.bin"
    weights.write_bytes(b"known boxes")
    run = dict(weights=weights, categories=DOTA_CATEGORIES, resources=ActorResources(**CPU_ACTOR),
               batch_size=2, load_model=KnownBoxes(boxes))
    options = DetectOptions(score_threshold=0.25, max_objects=4, image_size=64)
    summary = detect(tmp_path / "in", tmp_path / "out", options=options, **run)
    assert (summary["rows"], summary["quarantined"], summary["chunks_written"]) == (4, 1, 2)

    got = {r["id"]: r["objects"] for r in read_table(tmp_path / "out").to_pylist()}
    assert [o["category"] for o in got["single"]] == ["large-vehicle", "plane", "storage-tank",
                                                      "swimming-pool"]
    expected_boxes = [[0.2, 0.2, 0.3, 0.3], [0.475, 0.3, 0.525, 0.7], [0.2, 0.4, 0.4, 0.8],
                      [0.85, 0.4, 1.0, 0.6]]
    for o, box, score in zip(got["single"], expected_boxes, (0.9, 0.8, 0.7, 0.6)):
        assert o["box"] == pytest.approx(box, abs=1e-6)
        assert o["score"] == pytest.approx(score, abs=1e-6)
    # the four best of six, highest first; the input's objects are replaced
    assert [round(o["score"], 2) for o in got["crowded"]] == [0.55, 0.5, 0.45, 0.4]
    assert got["crowded"][0]["box"] == pytest.approx([58 / 200, 8 / 100, 62 / 200, 12 / 100], abs=1e-6)
    assert {o["category"] for o in got["crowded"]} == {"small-vehicle"}
    assert got["pair"] == [] and got["broken"] == []

    # Resumable: the same options skip both chunks; new options redo them.
    again = detect(tmp_path / "in", tmp_path / "out", options=options, **run)
    assert (again["chunks_written"], again["chunks_skipped"]) == (0, 2)
    (tmp_path / "out" / "_meta" / "chunks" / "00001.json").unlink()
    again = detect(tmp_path / "in", tmp_path / "out", options=options, **run)
    assert (again["chunks_written"], again["chunks_skipped"]) == (1, 1)
    looser = DetectOptions(score_threshold=0.1, max_objects=10, image_size=64)
    again = detect(tmp_path / "in", tmp_path / "out", options=looser, **run)
    assert (again["chunks_written"], again["rows"]) == (2, 4)
    got = {r["id"]: r["objects"] for r in read_table(tmp_path / "out").to_pylist()}
    assert len(got["single"]) == 5 and len(got["crowded"]) == 6
    assert len(list((tmp_path / "out").glob("*.parquet"))) == 2


def test_ultralytics_names_map_to_the_schema_categories():
    from rsir.data.detection import category_map

    mapped = category_map(DOTAV1_NAMES, DOTA_CATEGORIES)
    assert [mapped[i] for i in range(15)] == list(DOTA_CATEGORIES)
    with pytest.raises(ValueError, match="'person' is not one of the categories"):
        category_map({0: "person"}, DOTA_CATEGORIES)


def test_missing_weights_and_missing_extra_are_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="no-such.pt not found.*--weights"):
        YoloLoader(str(tmp_path / "no-such.pt"))("cpu")
    monkeypatch.setitem(sys.modules, "ultralytics", None)  # import ultralytics -> ImportError
    with pytest.raises(ImportError, match=r"rsir\[detect\]"):
        import_ultralytics()
