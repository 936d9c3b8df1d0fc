"""The Serve endpoint end to end on 127.0.0.1: query kinds, errors, auth, hot swap,
a property test over generated requests, and the search page in headless Chromium."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.ray

requests = pytest.importorskip("requests")
psutil = pytest.importorskip("psutil")
REPO = Path(__file__).resolve().parents[1]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def png(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def server(ray_session, tmp_path_factory):
    from ray import serve

    from rsir.config import from_dict
    from rsir.serve.app import build_app
    from rsir.serve.config import ServeConfig
    from rsir.serve.fixture import free_ports, make_fixture, serve_config_dict

    fx = make_fixture(tmp_path_factory.mktemp("serve"), n_scenes=16, n_pairs=8)
    (port,) = free_ports(1)
    # A base map from a tile server that is not there (port 9): the page still draws, the
    # tile URLs it asks for are checked.
    cfg_dict = serve_config_dict(fx, port, tile_url="http://127.0.0.1:9/{z}/{x}/{y}.png")
    cfg_dict["monitors"] = {"store": str(tmp_path_factory.mktemp("serve_state") / "monitors.db"),
                            "deliver_interval_s": 0.2, "score_cpus": 0.25}  # beside the replicas' CPUs
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(from_dict(ServeConfig, cfg_dict)), name="rsir", route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    session = requests.Session()
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if session.get(url + "/healthz", timeout=2).status_code == 200:
                break
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    yield {"url": url, "fx": fx, "s": session, "cfg": cfg_dict}
    serve.shutdown()


def post(server, body, path="/v1/search", **kw):
    return server["s"].post(server["url"] + path, json=body, timeout=30, **kw)


# ---------------------------------------------------------------------------------------
# Query kinds
# ---------------------------------------------------------------------------------------


def test_health_archives_docs(server):
    s, url = server["s"], server["url"]
    assert s.get(url + "/healthz").json()["status"] == "ok"
    info = s.get(url + "/v1/archives").json()["archives"]
    assert info["images"]["count"] == 16 and info["pairs"]["count"] == 8
    assert info["captions"]["count"] == len(server["fx"]["texts"])
    assert s.get(url + "/openapi.json").json()["paths"]["/v1/search"]
    assert s.get(url + "/docs").status_code == 200
    page = s.get(url + "/")
    assert page.status_code == 200 and "/v1/search" in page.text


def _listening_pids(port: int) -> set[int]:
    """The processes listening on TCP ``port`` (at least one, all visible to us)."""
    pids = {c.pid for c in psutil.net_connections("tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == port}
    assert pids, f"nothing listens on {port}"
    assert None not in pids, f"no permission to see who listens on {port}"
    return pids


def test_port_is_answered_by_the_configured_front(server):
    """The session's Ray runs Serve with ServeConfig's default front, proxy: haproxy
    (tests/conftest.py): HAProxy listens on the configured host and port and forwards to
    the ingress replica's own HTTP server, not Serve's Python proxy actor."""
    port = int(server["url"].rsplit(":", 1)[1])
    names = {psutil.Process(pid).name() for pid in _listening_pids(port)}
    assert names == {"haproxy"}, names


@pytest.mark.slow
def test_rsir_serve_command_answers_and_leaves_nothing_behind(server, tmp_path):
    """`rsir serve` on a Ray of its own: HAProxy on the config's port answers a search;
    on SIGINT the process exits within seconds and takes HAProxy with it."""
    import signal

    import yaml

    from rsir.serve.fixture import free_ports, local_serve_env, serve_config_dict

    (port,) = free_ports(1)
    cfg = tmp_path / "serve.yaml"
    cfg.write_text(yaml.safe_dump(serve_config_dict(server["fx"], port, api_key_file=None)))
    # HAProxy's stats / metrics and the fallback proxy off their fixed ports (the session's
    # Serve holds free ones), nothing else: `rsir serve` sets its front itself.
    env = {**os.environ, **{k: v for k, v in local_serve_env("haproxy").items()
                            if k.endswith("_PORT")}}
    env.pop("RAY_ADDRESS", None)  # a local instance, not the session's cluster
    rsir = Path(sys.executable).parent / "rsir"
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen([str(rsir), "serve", "--config", str(cfg)], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            try:
                if requests.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:  # not listening yet, or no replica yet
                pass
            time.sleep(0.5)
        text = server["fx"]["texts"][0]
        r = requests.post(url + "/v1/search", json={"kind": "text", "text": text,
                                                    "target": "captions", "k": 1}, timeout=30)
        assert r.status_code == 200, (tmp_path / "serve.log").read_text()[-3000:]
        assert r.json()["results"][0]["text"] == text
        holders = _listening_pids(port)
        assert {psutil.Process(pid).name() for pid in holders} == {"haproxy"}
        start = time.time()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        assert time.time() - start < 20
        time.sleep(1)
        for pid in holders:
            assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def test_image_query_finds_itself(server):
    for row in server["fx"]["scenes"][:4]:
        r = post(server, {"kind": "image", "image": b64(row["image"]), "k": 3})
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["ids"][0] == row["id"]
        assert out["results"][0]["thumbnail"] == f"/v1/thumbnails/{row['id']}"
        assert out["results"][0]["captions"]


def test_pair_query_finds_itself(server):
    for row in server["fx"]["pairs"][:3]:
        r = post(server, {"kind": "image_pair", "image": b64(row["image"]),
                          "image_t2": b64(row["image_t2"]), "k": 2})
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["target"] == "pairs" and out["ids"][0] == row["id"]
        assert out["results"][0]["changed"] == row["changed"]


def test_text_query_finds_its_caption_and_matches_local_scoring(server):
    fx = server["fx"]
    for text in fx["texts"][:3]:
        out = post(server, {"kind": "text", "text": text, "target": "captions", "k": 1}).json()
        assert out["results"][0]["text"] == text
        assert out["scores"][0] == pytest.approx(1.0, abs=1e-4)
    text = fx["texts"][0]
    q = np.asarray(post(server, {"kind": "text", "text": text}, "/v1/embed").json()["embedding"])
    expected = np.argsort(-(fx["vectors"]["images"] @ q), kind="stable")[:3]
    out = post(server, {"kind": "text", "text": text, "target": "images", "k": 3}).json()
    assert out["ids"] == [fx["scenes"][i]["id"] for i in expected]
    reranked = post(server, {"kind": "text", "text": text, "k": 3, "rerank": True})
    assert reranked.status_code == 200 and len(reranked.json()["ids"]) == 3


def test_composed_query(server):
    row = server["fx"]["scenes"][5]
    out = post(server, {"kind": "composed", "image": b64(row["image"]), "text": "a red building",
                        "lambda": 0.0, "k": 3}).json()
    assert out["ids"][0] == row["id"]
    out1 = post(server, {"kind": "composed", "image": b64(row["image"]), "text": "a red building",
                         "lambda": 1.0, "k": 16}).json()
    assert len(out1["ids"]) == 16


def test_image_to_captions_and_rerank(server):
    row = server["fx"]["scenes"][2]
    out = post(server, {"kind": "image", "image": b64(row["image"]), "target": "captions",
                        "k": 4, "rerank": True}).json()
    assert len(out["ids"]) == 4 and all("#" in i for i in out["ids"])


def test_embed_and_thumbnail(server):
    s, url = server["s"], server["url"]
    row = server["fx"]["scenes"][0]
    e = post(server, {"kind": "image", "image": b64(row["image"])}, "/v1/embed").json()
    assert e["dim"] == len(e["embedding"]) == 128
    t = s.get(f"{url}/v1/thumbnails/{row['id']}")
    assert t.status_code == 200 and t.headers["content-type"] == "image/png"
    assert t.content == row["image"]
    pair = server["fx"]["pairs"][0]
    assert s.get(f"{url}/v1/thumbnails/{pair['id']}?date=2").content == pair["image_t2"]
    assert s.get(f"{url}/v1/thumbnails/nope").status_code == 404


def test_multipart_upload(server):
    row = server["fx"]["scenes"][3]
    r = server["s"].post(server["url"] + "/v1/search/upload", timeout=30,
                         data={"kind": "image", "k": "2"},
                         files={"image": ("x.png", row["image"], "image/png")})
    assert r.status_code == 200, r.text
    assert r.json()["ids"][0] == row["id"]
    bad = server["s"].post(server["url"] + "/v1/search/upload", data={"kind": "image", "k": "x"})
    assert bad.status_code == 422 and "k" in bad.json()["error"]
    # a filter as a JSON form field: scenes 0..3 (the first grid line), as GeoJSON
    r = server["s"].post(server["url"] + "/v1/search/upload", timeout=30,
                         headers={"accept": "application/geo+json"},
                         data={"kind": "image", "k": "10",
                               "filter": json.dumps({"bbox": [10.0, 45.02, 10.4, 45.08]})},
                         files={"image": ("x.png", row["image"], "image/png")})
    assert r.status_code == 200 and r.headers["content-type"] == "application/geo+json", r.text
    assert sorted(f["id"] for f in r.json()["features"]) == [f"scene-00000{i}" for i in range(4)]
    bad = server["s"].post(server["url"] + "/v1/search/upload", data={"kind": "image",
                                                                      "filter": "{nope"})
    assert bad.status_code == 422 and "filter" in bad.json()["error"]


# ---------------------------------------------------------------------------------------
# Filters, geography, GeoJSON (the fixture lays scenes on a 0.1-degree grid from 10E 45N,
# 4 a line, a month apart from 2019-01-01; pairs from 20E, their second date 400 days on)
# ---------------------------------------------------------------------------------------


def _passes(row, f) -> bool:
    """The filter rules read independently, on the fixture's shard rows."""
    from datetime import datetime

    def when(text):
        return datetime.fromisoformat(text.replace("Z", "+00:00"))

    if "bbox" in f:
        w, s_, e, n = f["bbox"]
        b = row["bbox"]
        if not (b[0] <= e and b[2] >= w and b[1] <= n and b[3] >= s_):
            return False
    if "datetime" in f:
        lo, hi = f["datetime"].split("/")
        start, end = row["acquired"], row["acquired_t2"] or row["acquired"]
        if (lo != ".." and end < when(lo)) or (hi != ".." and start > when(hi)):
            return False
    if "class_name" in f and row["class_name"] not in f["class_name"]:
        return False
    if "changed" in f and row["changed"] is not f["changed"]:
        return False
    return "sensor" not in f or row["sensor"] == f["sensor"]


SCENE_FILTERS = [
    {"bbox": [10.05, 45.05, 10.25, 45.15]},  # 2 lines x 3 columns of tiles
    {"datetime": "2019-03-01T00:00:00Z/2019-08-01T00:00:00Z"},
    {"datetime": "../2019-02-15T00:00:00Z", "sensor": "sentinel-2a"},
    {"bbox": [10.0, 45.0, 10.4, 45.4], "datetime": "2019-06-01T00:00:00+02:00/.."},
    {"sensor": "landsat-8", "bbox": [9, 44, 11, 46]},
]


@pytest.mark.parametrize("f", SCENE_FILTERS, ids=[str(f) for f in SCENE_FILTERS])
def test_filtered_text_search_equals_brute_force(server, f):
    fx = server["fx"]
    text = fx["texts"][1]
    q = np.asarray(post(server, {"kind": "text", "text": text}, "/v1/embed").json()["embedding"])
    passing = [i for i, r in enumerate(fx["scenes"]) if _passes(r, f)]
    assert 0 < len(passing) < 16
    scores = fx["vectors"]["images"] @ q
    for k in (3, 16):
        want = [fx["scenes"][i]["id"] for i in sorted(passing, key=lambda i: -scores[i])][:k]
        r = post(server, {"kind": "text", "text": text, "k": k, "filter": f})
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["ids"] == want and out["missing_shards"] == [] and out["shards"] == 2
        assert len(out["ids"]) == min(k, len(passing))  # k whenever k rows pass


def test_filtered_image_pair_composed_and_caption_searches(server):
    fx = server["fx"]
    row = fx["scenes"][6]
    f = {"bbox": [10.0, 45.12, 10.4, 45.18]}  # inside the second line: scenes 4..7
    out = post(server, {"kind": "image", "image": b64(row["image"]), "k": 10, "filter": f}).json()
    assert out["ids"][0] == row["id"] and sorted(out["ids"]) == [f"scene-00000{i}" for i in (4, 5, 6, 7)]
    out = post(server, {"kind": "composed", "image": b64(row["image"]), "text": "a red building",
                        "lambda": 0.0, "k": 10, "filter": f}).json()
    assert out["ids"][0] == row["id"] and len(out["ids"]) == 4
    # captions carry their image's geography: every caption found belongs to scenes 4..7
    out = post(server, {"kind": "text", "text": fx["texts"][0], "target": "captions", "k": 50,
                        "filter": f}).json()
    assert out["ids"] and {r["owner"] for r in out["results"]} <= {f"scene-00000{i}" for i in (4, 5, 6, 7)}
    # pairs: acquired 2019-01-01 + 30 i days, so pairs 0..2 start by 2019-03-15
    pair = fx["pairs"][0]
    for pf, want in (({"datetime": "../2019-03-15T00:00:00Z"}, ["pair-000000", "pair-000001",
                                                                "pair-000002"]),
                     ({"changed": True}, [p["id"] for p in fx["pairs"] if p["changed"]])):
        out = post(server, {"kind": "image_pair", "image": b64(pair["image"]),
                            "image_t2": b64(pair["image_t2"]), "k": 8, "filter": pf}).json()
        assert want and sorted(out["ids"]) == want, pf
    assert all(r["changed"] is True for r in out["results"])


def test_results_carry_footprint_and_dates(server):
    row = server["fx"]["scenes"][5]  # lon 10.1 .. 10.2, lat 45.1 .. 45.2, 2019-01-01 + 150 days
    out = post(server, {"kind": "image", "image": b64(row["image"]), "k": 1}).json()
    r = out["results"][0]
    assert r["id"] == row["id"] and r["acquired"] == "2019-05-31T00:00:00Z"
    assert r["acquired_t2"] is None and r["sensor"] == "landsat-8"
    ring = np.array(r["footprint"]["coordinates"][0])
    assert r["footprint"]["type"] == "Polygon" and ring.shape == (5, 2)
    np.testing.assert_allclose(ring.min(0), [10.1, 45.1], atol=1e-9)
    np.testing.assert_allclose(ring.max(0), [10.2, 45.2], atol=1e-9)
    np.testing.assert_allclose(r["bbox"], [10.1, 45.1, 10.2, 45.2], atol=1e-9)
    pair = server["fx"]["pairs"][1]
    out = post(server, {"kind": "image_pair", "image": b64(pair["image"]),
                        "image_t2": b64(pair["image_t2"]), "k": 1}).json()
    assert out["results"][0]["acquired"] == "2019-01-31T00:00:00Z"
    assert out["results"][0]["acquired_t2"] == "2020-03-06T00:00:00Z"  # 400 days later


def test_geojson_results(server):
    row = server["fx"]["scenes"][2]
    body = {"kind": "image", "image": b64(row["image"]), "k": 4,
            "filter": {"bbox": [10.0, 45.0, 10.4, 45.1]}}
    plain = post(server, body).json()
    r = post(server, body, headers={"accept": "application/geo+json"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/geo+json"
    fc = r.json()
    assert fc["type"] == "FeatureCollection" and len(fc["features"]) == 4
    for rank, (feat, res) in enumerate(zip(fc["features"], plain["results"]), 1):
        assert feat["type"] == "Feature" and feat["id"] == res["id"]
        assert feat["geometry"] == res["footprint"] and feat["bbox"] == res["bbox"]
        p = feat["properties"]
        assert (p["id"], p["rank"], p["acquired"], p["class_name"]) == (
            res["id"], rank, res["acquired"], res["class_name"])
        assert p["score"] == pytest.approx(res["score"])
    assert fc["features"][0]["id"] == row["id"]
    err = post(server, {"kind": "image"}, headers={"accept": "application/geo+json"})
    assert err.status_code == 422 and "image" in err.json()["error"]


# ---------------------------------------------------------------------------------------
# Bad input: 4xx naming the field, never 5xx
# ---------------------------------------------------------------------------------------

RGB = np.zeros((32, 32, 3), np.uint8)
RGBA = np.zeros((32, 32, 4), np.uint8)
BIG = np.zeros((600, 600, 3), np.uint8)

BAD = [
    ("malformed json", b"{not json", 400, "body"),
    ("not an object", [1, 2], 422, "JSON object"),
    ("missing kind", {"text": "x"}, 422, "kind"),
    ("unknown kind", {"kind": "video", "text": "x"}, 422, "kind"),
    ("unknown field", {"kind": "text", "text": "x", "foo": 1}, 422, "foo"),
    ("missing text", {"kind": "text"}, 422, "text"),
    ("empty text", {"kind": "text", "text": "  "}, 422, "text"),
    ("text not a string", {"kind": "text", "text": 5}, 422, "text"),
    ("text too long", {"kind": "text", "text": "a" * 301}, 413, "text"),
    ("missing image", {"kind": "image"}, 422, "image"),
    ("missing image_t2", {"kind": "image_pair", "image": b64(png(RGB))}, 422, "image_t2"),
    ("not base64", {"kind": "image", "image": "%%%"}, 422, "image"),
    ("undecodable image", {"kind": "image", "image": b64(b"not an image at all")}, 422, "image"),
    ("wrong band count", {"kind": "image", "image": b64(png(RGBA))}, 422, "bands"),
    ("band names mismatch", {"kind": "image", "image": b64(png(RGB)), "bands": ["R", "G"]},
     422, "bands"),
    ("image too large", {"kind": "image", "image": b64(png(BIG))}, 413, "image"),
    ("k too large", {"kind": "text", "text": "x", "k": 51}, 422, "k"),
    ("k not int", {"kind": "text", "text": "x", "k": "5"}, 422, "k"),
    ("lambda out of range", {"kind": "composed", "text": "x", "image": b64(png(RGB)),
                             "lambda": 2}, 422, "lambda"),
    ("unknown target", {"kind": "text", "text": "x", "target": "maps"}, 422, "target"),
    ("target not for kind", {"kind": "composed", "text": "x", "image": b64(png(RGB)),
                             "target": "captions"}, 422, "target"),
    ("rerank not bool", {"kind": "text", "text": "x", "rerank": "yes"}, 422, "rerank"),
    ("payload too large", {"kind": "text", "text": "x" * 2_100_000}, 413, "body"),
    ("filter not an object", {"kind": "text", "text": "x", "filter": [1]}, 422, "filter"),
    ("unknown filter", {"kind": "text", "text": "x", "filter": {"cloud": 3}}, 422, "filter.cloud"),
    ("bad bbox", {"kind": "text", "text": "x", "filter": {"bbox": [1, 2, 3]}}, 422, "filter.bbox"),
    ("bbox lat order", {"kind": "text", "text": "x", "filter": {"bbox": [0, 9, 1, 8]}}, 422,
     "filter.bbox"),
    ("naive datetime", {"kind": "text", "text": "x",
                        "filter": {"datetime": "2020-01-01T00:00:00/.."}}, 422, "filter.datetime"),
    ("datetime reversed", {"kind": "text", "text": "x", "filter": {
        "datetime": "2021-01-01T00:00:00Z/2020-01-01T00:00:00Z"}}, 422, "filter.datetime"),
    ("changed not bool", {"kind": "text", "text": "x", "filter": {"changed": 1}}, 422,
     "filter.changed"),
    ("class_name empty", {"kind": "text", "text": "x", "filter": {"class_name": []}}, 422,
     "filter.class_name"),
]


@pytest.mark.parametrize("name,body,status,field", BAD, ids=[b[0] for b in BAD])
def test_bad_input(server, name, body, status, field):
    if isinstance(body, bytes):
        r = server["s"].post(server["url"] + "/v1/search", data=body, timeout=30,
                             headers={"content-type": "application/json"})
    else:
        r = post(server, body)
    assert r.status_code == status, r.text
    assert field in r.json()["error"], r.json()


def test_bad_embed(server):
    r = post(server, {"kind": "composed", "text": "x"}, "/v1/embed")
    assert r.status_code == 422 and "kind" in r.json()["error"]


# ---------------------------------------------------------------------------------------
# Property: generated requests never get a 5xx
# ---------------------------------------------------------------------------------------


def test_generated_requests_never_5xx(server):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    good_image = b64(server["fx"]["scenes"][0]["image"])
    image = st.sampled_from([good_image, b64(png(RGBA)), b64(b"garbage"), "", "!!", None])
    scalar = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20),
                       st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40))
    value = st.one_of(scalar, st.lists(scalar, max_size=3), st.dictionaries(st.text(max_size=5),
                                                                            scalar, max_size=2))
    field = {
        "kind": st.one_of(st.sampled_from(["text", "image", "image_pair", "composed"]), scalar),
        "text": st.one_of(st.text(max_size=60), scalar),
        "image": st.one_of(image, scalar),
        "image_t2": st.one_of(image, scalar),
        "lambda": st.one_of(st.floats(-1, 2), scalar),
        "target": st.one_of(st.sampled_from(["images", "pairs", "captions"]), scalar),
        "k": st.one_of(st.integers(-3, 60), scalar),
        "rerank": st.one_of(st.booleans(), scalar),
        "bands": st.one_of(st.just(["R", "G", "B"]), st.lists(st.text(max_size=3), max_size=4),
                           scalar),
        "filter": st.one_of(value, st.fixed_dictionaries({}, optional={
            "bbox": st.one_of(st.lists(st.floats(-200, 200), max_size=5), value),
            "datetime": st.one_of(st.sampled_from(["2019-01-01T00:00:00Z/..", "../..", "x/y",
                                                   "2019-01-01T00:00:00Z"]), value),
            "changed": value, "sensor": value, "class_name": value})),
        "zzz": value,
    }
    valid = st.fixed_dictionaries(
        {"kind": st.just("text"), "text": st.text(min_size=1, max_size=40).filter(str.strip)},
        optional={"k": st.integers(1, 50), "target": st.sampled_from(["images", "captions"]),
                  "lambda": st.floats(0, 1)})
    body = st.one_of(
        valid,
        st.fixed_dictionaries({}, optional=field),
        value,
        st.binary(max_size=64).map(lambda b: ("raw", b)),
    )
    seen = {"n": 0, "ok": 0}

    @settings(max_examples=500, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(body=body, path=st.sampled_from(["/v1/search", "/v1/search", "/v1/embed"]))
    def check(body, path):
        if isinstance(body, tuple) and body and body[0] == "raw":
            r = server["s"].post(server["url"] + path, data=body[1], timeout=30,
                                 headers={"content-type": "application/json"})
        else:  # json.dumps writes NaN / Infinity, which the server must reject cleanly
            r = server["s"].post(server["url"] + path, data=json.dumps(body), timeout=30,
                                 headers={"content-type": "application/json"})
        seen["n"] += 1
        seen["ok"] += r.status_code == 200
        assert r.status_code < 500, (body, r.status_code, r.text)
        if r.status_code >= 400:
            assert "error" in r.json()

    check()
    assert seen["n"] >= 500 and seen["ok"] > 0


# ---------------------------------------------------------------------------------------
# Hot swap during traffic
# ---------------------------------------------------------------------------------------


def test_hot_swap_under_traffic(server):
    from rsir.retrieval.archive import current_version, load_archive, publish_archive
    from rsir.serve.fixture import random_unit

    fx, s, url = server["fx"], requests.Session(), server["url"]
    root = fx["roots"]["images"]
    before = current_version(root)
    stop, failures, versions = threading.Event(), [], []
    text = fx["texts"][0]

    def traffic():
        while not stop.is_set():
            try:
                r = s.post(url + "/v1/search", json={"kind": "text", "text": text, "k": 2},
                           timeout=30)
                if r.status_code != 200:
                    failures.append(r.status_code)
                else:
                    versions.append(r.json()["version"])
            except Exception as err:  # noqa: BLE001
                failures.append(repr(err))

    threads = [threading.Thread(target=traffic) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    ids = [r["id"] for r in fx["scenes"]] + ["scene-new"]
    vecs = np.concatenate([fx["vectors"]["images"], random_unit(1, 128)])
    # the rows keep their geography; the new one has none
    meta = {k: v + [None] for k, v in load_archive(root).metadata.items()}
    new = publish_archive(root, ids, vecs, {"model": "dual_encoder", "kind": "image"}, meta)
    deadline = time.time() + 15
    while time.time() < deadline and (not versions or versions[-1] != new):
        time.sleep(0.1)
    time.sleep(0.3)
    stop.set()
    for t in threads:
        t.join()
    assert new != before
    assert not failures, failures[:5]
    assert versions[0] == before and versions[-1] == new
    info = server["s"].get(url + "/v1/archives").json()["archives"]["images"]
    assert info["version"] == new and info["count"] == 17


def test_indexed_archive_is_served_by_its_shards_as_the_unindexed_one(server):
    """The images archive copied into a version with a (Flat, 4-piece) index: the 2 shards
    open their pieces memory-mapped instead of loading vectors, and answer the same ids."""
    from rsir.retrieval.archive import current_version, load_archive, publish_archive, set_current
    from rsir.retrieval.index import BuildOptions, build_version_index

    root, text = server["fx"]["roots"]["images"], server["fx"]["texts"][1]
    body = {"kind": "text", "text": text, "k": 6}
    before = post(server, body).json()
    a = load_archive(root, current_version(root))
    new = publish_archive(root, a.ids, a.vectors, {"model": "dual_encoder", "kind": "image"},
                          a.metadata, current=False)
    build_version_index(root, new, BuildOptions(key="Flat", pieces=4, eval_queries=8))
    set_current(root, new)
    deadline = time.time() + 15
    while time.time() < deadline and (after := post(server, body).json())["version"] != new:
        time.sleep(0.1)
    assert after["version"] == new and after["missing_shards"] == []
    assert after["ids"] == before["ids"]
    np.testing.assert_allclose(after["scores"], before["scores"], rtol=1e-5)


# ---------------------------------------------------------------------------------------
# Search page in headless Chromium
# ---------------------------------------------------------------------------------------


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def test_search_page_in_chromium(server, tmp_path):
    exe = _chromium()
    if exe is None:
        why = "no chromium on PATH (apt-get install -y chromium) to drive the search page"
        if os.environ.get("RSIR_REQUIRE_BROWSER"):  # set by `make test`, which installs it
            pytest.fail(why + "; RSIR_REQUIRE_BROWSER is set")
        pytest.skip(why)
    page = server["url"] + "/?q=red+buildings"
    # Offline and quiet: no QUIC, updates, sync or first-run work, nothing off loopback.
    common = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--disable-quic", "--disable-background-networking", "--disable-component-update",
              "--disable-sync", "--no-first-run", "--hide-scrollbars",
              "--virtual-time-budget=8000", "--window-size=1280,900"]
    dom = subprocess.run(common + [f"--user-data-dir={tmp_path / 'profile-dom'}", "--dump-dom", page],
                         capture_output=True, text=True, timeout=60).stdout
    assert dom.count('class="result"') >= 1, dom[-2000:]
    assert "/v1/thumbnails/scene-" in dom
    out = REPO / "test-artifacts"
    out.mkdir(exist_ok=True)
    shot = out / "search_page.png"
    shot.unlink(missing_ok=True)
    subprocess.run(common + [f"--user-data-dir={tmp_path / 'profile-shot'}", f"--screenshot={shot}", page],
                   capture_output=True, timeout=60)
    assert shot.is_file() and shot.stat().st_size > 1000


class _Chromium:
    """Headless Chromium driven over the DevTools protocol (websockets): real mouse
    events, script evaluation and screenshots."""

    def __init__(self, exe: str, profile: Path) -> None:
        from websockets.sync.client import connect

        from rsir.serve.fixture import free_ports

        (port,) = free_ports(1)
        self.proc = subprocess.Popen(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--disable-quic", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--no-first-run", "--hide-scrollbars", "--window-size=1280,900",
             f"--remote-debugging-port={port}", f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline, target = time.time() + 60, None
        while time.time() < deadline and target is None:
            try:
                pages = requests.get(f"http://127.0.0.1:{port}/json/list", timeout=2).json()
                target = next((p for p in pages if p.get("type") == "page"), None)
            except requests.RequestException:
                time.sleep(0.3)
        assert target, "chromium's DevTools endpoint never came up"
        self.ws = connect(target["webSocketDebuggerUrl"], max_size=2**26, open_timeout=30)
        self.n = 0

    def call(self, method: str, **params):
        self.n += 1
        self.ws.send(json.dumps({"id": self.n, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=60))
            if msg.get("id") == self.n:
                assert "error" not in msg, (method, msg["error"])
                return msg["result"]

    def eval(self, expr: str):
        out = self.call("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in out, out["exceptionDetails"]
        return out["result"].get("value")

    def wait(self, expr: str, timeout: float = 30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = self.eval(expr)
            if value:
                return value
            time.sleep(0.2)
        raise AssertionError(f"never true in the page: {expr}")

    def mouse(self, kind: str, x: float, y: float, buttons: int = 0) -> None:
        self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left" if buttons
                  or kind != "mouseMoved" else "none", buttons=buttons, clickCount=1)

    def center(self, selector: str) -> tuple[float, float]:
        r = self.eval(f"(() => {{ const b = document.querySelector({json.dumps(selector)})"
                      ".getBoundingClientRect(); return [b.x + b.width / 2, b.y + b.height / 2]; })()")
        return r[0], r[1]

    def close(self) -> None:
        self.ws.close()
        self.proc.kill()
        self.proc.wait(timeout=30)


def _tile(lon: float, lat: float, z: int) -> tuple[int, int]:
    """The OSM slippy-map tile holding a point (the formula of the OSM wiki)."""
    import math

    n = 2 ** z
    r = math.radians(lat)
    return int((lon + 180) / 360 * n), int((1 - math.asinh(math.tan(r)) / math.pi) / 2 * n)


def test_map_page_in_chromium(server, tmp_path):
    """Footprints drawn beside the thumbnails, hover highlights one, a date range and a
    box drawn with the mouse filter the search (each equal to the API's filtered answer);
    screenshot in test-artifacts/search_map.png."""
    exe = _chromium()
    if exe is None:
        why = "no chromium on PATH (apt-get install -y chromium) to drive the search page"
        if os.environ.get("RSIR_REQUIRE_BROWSER"):
            pytest.fail(why + "; RSIR_REQUIRE_BROWSER is set")
        pytest.skip(why)
    text = server["fx"]["texts"][2]
    b = _Chromium(exe, tmp_path / "profile-map")
    try:
        b.call("Page.navigate", url=server["url"] + "/?q=" + requests.utils.quote(text))
        n = b.wait("document.querySelectorAll('.result').length")
        want = post(server, {"kind": "text", "text": text, "k": 12}).json()
        assert b.eval("[...document.querySelectorAll('.result')].map(d => d.dataset.id)") == want["ids"]
        with_fp = sum(r["footprint"] is not None for r in want["results"])  # not scene-new
        assert n == 12 and b.eval("document.querySelectorAll('#map polygon.fp').length") == with_fp >= 11
        assert b.eval("document.querySelectorAll('#map line.grat').length") >= 4
        labels = b.eval("[...document.querySelectorAll('#map .glabel')].map(t => t.textContent)")
        assert any(lab.startswith("10.") for lab in labels) and any(lab.startswith("45.") for lab in labels)
        # every footprint lies inside the map, drawn where its corners project
        rects = b.eval("[...document.querySelectorAll('#map polygon.fp')].map(p => { const r = "
                       "p.getBBox(); return [r.x, r.y, r.width, r.height]; })")
        assert all(0 <= x and 0 <= y and x + w <= 520 and y + h <= 400 and w > 5 for x, y, w, h in rects)
        # the base map's tiles: the tile under the first footprint's centre is asked for
        hrefs = b.eval("[...document.querySelectorAll('#map image.tile')].map(i => i.getAttribute('href'))")
        z = int(hrefs[0].split("/")[3])
        bb = want["results"][0]["bbox"]
        tx, ty = _tile((bb[0] + bb[2]) / 2, (bb[1] + bb[3]) / 2, z)
        assert f"http://127.0.0.1:9/{z}/{tx}/{ty}.png" in hrefs
        # hover a result card: its footprint (only) is highlighted
        first = want["ids"][3]
        b.mouse("mouseMoved", *b.center(f".result[data-id='{first}']"))
        b.wait(f"document.querySelector(\"#map polygon.fp[data-id='{first}']\").classList.contains('hl')")
        assert b.eval("document.querySelectorAll('#map polygon.fp.hl').length") == 1
        # a date range: the page's results are the API's with the same interval
        b.eval("$('from').value = '2019-03-01'; $('to').value = '2019-09-30';"
               "$('to').dispatchEvent(new Event('change')); true")
        f = {"datetime": "2019-03-01T00:00:00Z/2019-09-30T23:59:59Z"}
        dated = post(server, {"kind": "text", "text": text, "k": 12, "filter": f}).json()["ids"]
        assert 0 < len(dated) < 12
        b.wait("[...document.querySelectorAll('.result')].map(d => d.dataset.id).join() == "
               + json.dumps(",".join(dated)))
        # clear it, then draw a box over the map's middle with the mouse
        b.eval("$('from').value = ''; $('to').value = ''; $('clearfilter').click(); true")
        b.wait("document.querySelectorAll('.result').length == 12")
        b.mouse("mousePressed", *b.center("#draw"), buttons=1)
        b.mouse("mouseReleased", *b.center("#draw"))
        x0, y0 = b.eval("(() => { const r = $('map').getBoundingClientRect(); return [r.x, r.y]; })()")
        view, border = b.eval("view"), b.eval("$('map').clientLeft")
        b.mouse("mousePressed", x0 + 200, y0 + 150, buttons=1)
        b.mouse("mouseMoved", x0 + 260, y0 + 200, buttons=1)
        b.mouse("mouseReleased", x0 + 320, y0 + 250)
        b.wait("!!(filterBox && document.querySelector('#filterbox'))")
        box = b.eval("currentFilter().bbox")
        boxed = post(server, {"kind": "text", "text": text, "k": 12, "filter": {"bbox": box}}).json()
        assert 0 < len(boxed["ids"]) < 12, box
        b.wait("[...document.querySelectorAll('.result')].map(d => d.dataset.id).join() == "
               + json.dumps(",".join(boxed["ids"])))
        # the box is where the mouse went: its pixel corners back through Web Mercator,
        import math

        def lonlat(px, py):
            mx, my = view["x0"] + px / view["s"], view["y0"] + py / view["s"]
            return mx * 360 - 180, math.degrees(math.atan(math.sinh(math.pi * (1 - 2 * my))))

        (w, n), (e, s_) = lonlat(200 - border, 150 - border), lonlat(320 - border, 250 - border)
        # within 3 px (a pixel is 360 / view.s degrees of longitude, less of latitude here)
        np.testing.assert_allclose(box, [w, s_, e, n], atol=3 * 360 / view["s"])
        b.mouse("mouseMoved", *b.center(f".result[data-id='{boxed['ids'][0]}']"))
        b.wait("document.querySelectorAll('#map polygon.fp.hl').length == 1")
        out = REPO / "test-artifacts"
        out.mkdir(exist_ok=True)
        shot = out / "search_map.png"
        shot.write_bytes(base64.b64decode(b.call("Page.captureScreenshot", format="png")["data"]))
        assert shot.stat().st_size > 10_000
    finally:
        b.close()


# ---------------------------------------------------------------------------------------
# API key: rotated through api_key_file, no redeploy
# ---------------------------------------------------------------------------------------


def _wait_status(server, code):
    deadline = time.time() + 10
    while time.time() < deadline:
        if server["s"].get(server["url"] + "/v1/archives").status_code == code:
            return
        time.sleep(0.1)
    raise AssertionError(f"/v1/archives never answered {code}")


def test_api_key(server):
    s, url = server["s"], server["url"]
    key_file = Path(server["cfg"]["api_key_file"])
    body = {"kind": "text", "text": "a red building", "k": 1}
    assert post(server, body).status_code == 200  # no key configured: open
    key_file.write_text("s3cret\n")
    try:
        _wait_status(server, 401)
        r = post(server, body)
        assert r.status_code == 401 and "x-api-key" in r.json()["error"]
        assert post(server, body, headers={"x-api-key": "wrong"}).status_code == 401
        assert post(server, body, headers={"x-api-key": "s3cret"}).status_code == 200
        assert s.get(url + "/healthz").status_code == 200  # probes stay open
        row = server["fx"]["scenes"][0]
        assert s.get(f"{url}/v1/thumbnails/{row['id']}").status_code == 401
        assert s.get(f"{url}/v1/thumbnails/{row['id']}?api_key=s3cret").status_code == 200
    finally:
        key_file.unlink()
    _wait_status(server, 200)
    assert post(server, body).status_code == 200  # key removed: open again


# ---------------------------------------------------------------------------------------
# Monitors: standing queries scored on each new version's rows
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("body,status,field", [
    ({"target": "pairs", "query": {"kind": "text", "text": "x"}, "threshold": 0.1}, 422, "name"),
    ({"name": "m", "target": "pairs", "query": {"kind": "text", "text": "x"}}, 422, "threshold"),
    ({"name": "m", "target": "pairs", "query": {"kind": "text", "text": "x"}, "threshold": 0.1,
      "calibrate": {"top": 5}}, 422, "threshold"),
    ({"name": "m", "target": "pairs", "query": {"kind": "sketch"}, "threshold": 0.1}, 422, "query.kind"),
    ({"name": "m", "target": "pairs", "query": {"kind": "text"}, "threshold": 0.1}, 422, "query.text"),
    ({"name": "m", "target": "pairs", "query": {"kind": "text", "text": "x", "k": 3}, "threshold": 0.1},
     422, "query.k"),
    ({"name": "m", "target": "pairs", "query": {"kind": "text", "text": "x"}, "threshold": 0.1,
      "scope": {"bbox": [10, 50, 11]}}, 422, "scope.bbox"),
    ({"name": "m", "target": "pairs", "query": {"kind": "text", "text": "x"}, "threshold": 0.1,
      "scope": {"polygon": {"type": "Point", "coordinates": [1, 2]}}}, 422, "scope.polygon"),
    ({"name": "m", "target": "pairs", "query": {"kind": "text", "text": "x"}, "threshold": 0.1,
      "scope": {"datetime": "2021-01-01/.."}}, 422, "scope.datetime"),
    ({"name": "m", "target": "pairs", "query": {"kind": "text", "text": "x"}, "calibrate": {"top": 0}},
     422, "calibrate.top"),
    ({"name": "m", "target": "pairs", "query": {"kind": "text", "text": "x"}, "threshold": 0.1,
      "webhook": "ftp://x"}, 422, "webhook"),
    ({"name": "m", "target": "maps", "query": {"kind": "text", "text": "x"}, "threshold": 0.1}, 422, "target"),
])
def test_bad_monitor_definitions_name_the_field(server, body, status, field):
    r = post(server, body, path="/v1/monitors")
    assert r.status_code == status, r.text
    assert r.json()["field"] == field


def test_monitor_alerts_on_new_rows_in_scope_once(server, tmp_path):
    from rsir.retrieval.archive import current_version, load_archive, publish_archive
    from rsir.retrieval.filters import boxes_intersect

    fx, s, url = server["fx"], server["s"], server["url"]
    text = fx["texts"][0]
    scope = {"bbox": [20.0, 45.0, 20.15, 45.3], "datetime": "2019-01-01T00:00:00Z/.."}
    r = post(server, {"name": "new-change", "target": "pairs", "query": {"kind": "text", "text": text},
                      "scope": scope, "calibrate": {"top": 2}}, path="/v1/monitors")
    assert r.status_code == 201, r.text
    threshold = r.json()["threshold"]
    assert r.json()["calibrated_top"] == 2
    assert post(server, {"name": "new-change", "target": "pairs", "query": {"kind": "text", "text": "y"},
                         "threshold": 0.0}, path="/v1/monitors").status_code == 409
    assert [m["name"] for m in s.get(url + "/v1/monitors").json()["monitors"]] == ["new-change"]
    q = np.array(post(server, {"kind": "text", "text": text}, path="/v1/embed").json()["embedding"])
    root = fx["roots"]["pairs"]
    old = load_archive(root)
    # wait until the endpoint has taken the current version as its baseline
    deadline = time.time() + 30
    while time.time() < deadline and not server_scored(server, old.version):
        time.sleep(0.2)
    assert server_scored(server, old.version)
    # A delta: every old pair again under a new id (same place, same dates), plus their sum.
    new_ids = [f"{i}-2024" for i in old.ids]
    ids = old.ids + new_ids
    vectors = np.vstack([old.vectors, old.vectors])
    meta = {k: v + v for k, v in old.metadata.items()}
    publish_archive(root, ids, vectors, old.manifest, meta)
    expected = {new_ids[i] for i in range(len(old.ids))
                if old.vectors[i] @ q >= threshold - 1e-6
                and old.metadata["bbox"][i] is not None
                and boxes_intersect(np.array(old.metadata["bbox"][i]), np.array(scope["bbox"]))}
    assert expected  # the calibration's top rows lie in the scope: their copies alert
    got: set[str] = set()
    deadline = time.time() + 60
    while time.time() < deadline and got != expected:
        time.sleep(0.3)
        got = {a["row_id"] for a in s.get(url + "/v1/alerts", params={"monitor": "new-change"}).json()["alerts"]}
    from rsir.monitor.store import MonitorStore

    assert got == expected, (MonitorStore(server["cfg"]["monitors"]["store"]).scored("pairs"),
                             s.get(url + "/v1/archives").json()["archives"]["pairs"], current_version(root))
    feed = s.get(url + "/v1/alerts", params={"monitor": "new-change", "format": "geojson"})
    assert feed.headers["content-type"].startswith("application/geo+json")
    features = feed.json()["features"]
    assert {f["properties"]["row_id"] for f in features} == expected
    assert all(f["geometry"]["type"] == "Polygon" and f["properties"]["rank"] >= 1 for f in features)
    exe = _chromium()
    if exe is not None:  # the page lists the monitor and draws its alerts' footprints
        dom = subprocess.run(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", "--virtual-time-budget=8000", f"--user-data-dir={tmp_path / 'p'}",
             "--dump-dom", url + "/"], capture_output=True, text=True, timeout=60).stdout
        assert 'data-name="new-change"' in dom and f"{len(expected)} alert" in dom, dom[-1500:]
        assert dom.count('class="alert"') == len(expected)
    elif os.environ.get("RSIR_REQUIRE_BROWSER"):
        pytest.fail("no chromium on PATH; RSIR_REQUIRE_BROWSER is set")
    # republishing the same rows raises nothing new; pausing stops alerts
    assert s.patch(url + "/v1/monitors/new-change", json={"paused": True}).json()["paused"] is True
    detail = s.get(url + "/v1/monitors/new-change").json()
    assert len(detail["latest_alerts"]) == len(expected) and detail["webhook_deliveries"]["pending"] == 0
    assert s.delete(url + "/v1/monitors/new-change").status_code == 200
    assert s.get(url + "/v1/monitors/new-change").status_code == 404
    assert current_version(root) != old.version


def server_scored(server, version: str) -> bool:
    from rsir.monitor.store import MonitorStore

    return MonitorStore(server["cfg"]["monitors"]["store"]).last_scored("pairs") == version


# ---------------------------------------------------------------------------------------
# A search shard's replica dies: Serve restarts it, the others keep answering
# ---------------------------------------------------------------------------------------


def test_dead_shard_is_named_then_restarted(server):
    import ray

    fx = server["fx"]
    body = {"kind": "text", "text": fx["texts"][0], "target": "captions", "k": 50}
    full = post(server, body).json()
    assert full["missing_shards"] == [] and len(full["ids"]) == 50
    n_captions = len(fx["texts"])
    first_half = {f"{i}" for i in range((n_captions + 1) // 2)}  # shard 0's rows: 0 .. n/2
    replicas = [a for a in ray.util.list_named_actors(all_namespaces=True)
                if "SearchShard1" in a["name"] and a["name"].startswith("SERVE_REPLICA")]
    assert len(replicas) == 1, replicas
    # While shard 1 is down its rows cannot be loaded either (the captions archive moved
    # away), so the gap lasts whether Serve's replacement starts within search.timeout_s
    # or not; shard 0 answers from the rows it holds.
    root = Path(fx["roots"]["captions"])
    away = root.with_name(root.name + ".away")
    root.rename(away)
    try:
        ray.kill(ray.get_actor(replicas[0]["name"], namespace=replicas[0]["namespace"]),
                 no_restart=True)
        # The next response names shard 1 and holds shard 0's results: no failure, no silence.
        r = post(server, body)
    finally:
        away.rename(root)
    assert r.status_code == 200, r.text
    gap = r.json()
    assert gap["missing_shards"] == [1]
    assert gap["ids"] and all(i.split("#")[1] in first_half for i in gap["ids"])
    # shard 0's members of the complete top-50 are its own best rows, in that order
    kept = [i for i in full["ids"] if i.split("#")[1] in first_half]
    assert len(kept) < 50 and gap["ids"][: len(kept)] == kept
    assert len(gap["ids"]) == min(50, len(first_half))
    # Serve starts another replica; responses are complete again, and equal to before.
    deadline = time.time() + 90
    while time.time() < deadline:
        out = post(server, body).json()
        if out["missing_shards"] == []:
            break
        time.sleep(0.5)
    assert out["missing_shards"] == [] and out["ids"] == full["ids"]


def test_rsir_monitor_apply_creates_replaces_and_names_a_bad_entry(server, tmp_path):
    from rsir.monitor.cli import apply

    url = server["url"]
    text = server["fx"]["texts"][1]
    path = tmp_path / "monitors.yaml"

    def write(threshold, extra=""):
        path.write_text(f"""monitors:
  - name: apply-a
    target: pairs
    query: {{kind: text, text: "{text}"}}
    threshold: {threshold}
  - name: apply-b
    target: images
    query: {{kind: text, text: "{text}"}}
    scope: {{bbox: [10.0, 45.0, 10.2, 45.2]}}
    calibrate: {{top: 3}}
{extra}""")

    write(0.5)
    assert apply(path, url) == {"created": ["apply-a", "apply-b"], "replaced": [], "unchanged": [], "deleted": []}
    write(0.5)
    assert apply(path, url)["unchanged"] == ["apply-a", "apply-b"]
    write(0.6)
    assert apply(path, url)["replaced"] == ["apply-a"]
    assert server["s"].get(url + "/v1/monitors/apply-a").json()["threshold"] == 0.6
    write(0.6, "  - name: apply-c\n    target: pairs\n    query: {kind: text, text: x}\n"
               "    scope: {bbox: [1, 2, 3]}\n    threshold: 0.1\n")
    with pytest.raises(ValueError, match=r"monitors\[2\] \(apply-c\): scope.bbox"):
        apply(path, url)
    write(0.6)
    assert apply(path, url, prune=False)["unchanged"] == ["apply-a", "apply-b"]
    path.write_text("monitors: []\n")
    assert apply(path, url, prune=True)["deleted"] == ["apply-a", "apply-b"]
