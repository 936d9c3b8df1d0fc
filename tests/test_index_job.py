"""``rsir index`` end to end on Ray: a full build with its index, ``--append`` of another
split as a delta (no re-embedding of what is there), ``--delete`` and ``--compact``; every
step leaves CURRENT on a version whose index answers like exact search."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import REPO
from rsir.config import load_config
from rsir.data.demo_world import generate
from rsir.models import create_model

pytestmark = [pytest.mark.ray, pytest.mark.slow]
faiss = pytest.importorskip("faiss")


def test_index_job_full_append_delete_compact(ray_session, tmp_path):
    from rsir.cli import main
    from rsir.retrieval.archive import load_archive, read_manifest
    from rsir.retrieval.filters import StackedMetadata
    from rsir.retrieval.index import open_searcher
    from rsir.serve.archives import load_part

    generate(tmp_path / "world", n_scenes=60, n_pairs=0, seed=3, val_fraction=0.3, test_fraction=0.4)
    shards = tmp_path / "world" / "single"
    cfg = load_config(REPO / "configs" / "demo_tiny.yaml", [f"data.shards={shards}"])
    torch.manual_seed(0)
    model = create_model(cfg.model, cfg.loss).eval()
    torch.save({"model": model.state_dict()}, tmp_path / "model.pt")
    out = tmp_path / "archive"
    base = ["index", "--config", str(REPO / "configs" / "demo_tiny.yaml"), "--checkpoint",
            str(tmp_path / "model.pt"), "--out", str(out), f"data.shards={shards}",
            "index.flat_rows=5", "index.pieces=2", "index.eval_queries=8", "index.max_memory=10MB"]

    def check(expected_ids):
        arc = load_archive(out / "visual")
        assert sorted(arc.ids) == sorted(expected_ids)
        searcher = open_searcher(out / "visual", nprobe=1 << 20)
        _, rows = searcher.search(arc.vectors, 1)
        assert [arc.ids[r] for r in rows[:, 0]] == arc.ids  # each row finds itself
        # A search shard reads the rows the job's piece tasks wrote beside the pieces,
        # memory-mapped, tombstones left out: the archive's own ids and metadata.
        part = load_part(str(out / "visual"), arc.version, 0, 1)
        assert isinstance(part.table, StackedMetadata)
        held = part.rows.take(np.arange(len(part.rows)))
        assert [r["id"] for r in held] == arc.ids and "bbox" in arc.metadata
        for name, values in arc.metadata.items():
            assert [r[name] for r in held] == values, name
        return arc

    assert main(base) == 0
    full = check(load_archive(out / "visual").ids)
    meta = json.loads((out / "visual" / full.version / "index" / "index.json").read_text())
    assert meta["key"].startswith("IVF") and len(meta["pieces"]) == 2
    assert meta["report"]["recall@10"] == 1.0  # IVF-Flat, all lists probed once tuned

    assert main([*base, "--append", "--split", "val"]) == 0
    appended = read_manifest(out / "visual")
    assert appended["base"] == full.version and len(appended["segments"]) == 2
    val_ids = load_archive(out / "visual", appended["version"]).ids[len(full.ids):]
    assert len(val_ids) > 0 and not set(val_ids) & set(full.ids)
    check(full.ids + val_ids)

    gone = [full.ids[0], val_ids[0]]
    assert main([*base, "--delete", *gone]) == 0
    check([i for i in full.ids + val_ids if i not in gone])
    captions = load_archive(out / "captions")
    assert not set(gone) & set(captions.metadata["owner"])
    with pytest.raises(SystemExit, match="no live row with id"):
        main([*base, "--delete", gone[0]])

    assert main([*base, "--compact"]) == 0
    compacted = read_manifest(out / "visual")
    assert len(compacted["segments"]) == 1 and compacted["deleted"] == 0
    check([i for i in full.ids + val_ids if i not in gone])
    assert np.isfinite(load_archive(out / "visual").vectors).all()
