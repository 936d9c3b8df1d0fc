"""The shard schema: bounded-size writer, reader, image codecs."""

import numpy as np
import pyarrow.parquet as pq
import pytest

from rsir.data.schema import (
    SHARD_SCHEMA,
    attributes_dict,
    decode_image,
    encode_image,
    iter_rows,
    make_row,
    read_table,
    write_shards,
)


def rows(n):
    rng = np.random.default_rng(0)
    for i in range(n):
        img = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        yield make_row(
            id=f"r{i}", split="train" if i % 2 else "test", image=encode_image(img),
            image_t2=encode_image(img[::-1]) if i % 3 == 0 else None,
            captions=[{"text": f"caption {i}", "lang": "en"}, {"text": f"légende {i}", "lang": "fr"}],
            changed=bool(i % 3 == 0) if i % 3 == 0 else None, class_name="c",
            attributes={"color": "red"}, objects=[{"box": [0.1, 0.2, 0.3, 0.4], "category": "car"}],
            source=f"src/{i}",
        )


def test_round_trip_through_bounded_shards(tmp_path):
    paths = write_shards(rows(40), tmp_path, max_bytes=4000)
    assert len(paths) > 3  # the size bound split the rows
    assert all(pq.read_schema(p).equals(SHARD_SCHEMA) for p in paths)
    table = read_table(tmp_path)
    assert table.num_rows == 40
    back = table.to_pylist()
    orig = list(rows(40))
    for a, b in zip(back, orig):
        assert a["id"] == b["id"] and a["image"] == b["image"] and a["image_t2"] == b["image_t2"]
        assert a["captions"] == b["captions"]
        assert attributes_dict(a["attributes"]) == {"color": "red"}
        assert a["objects"][0]["category"] == "car"
        assert a["objects"][0]["box"] == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert read_table(tmp_path, split="test").num_rows == 20
    assert sum(1 for _ in iter_rows(tmp_path, split="train")) == 20


def test_codecs_png_and_multiband():
    rgb = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    assert encode_image(rgb)[:4] == b"\x89PNG"
    np.testing.assert_array_equal(decode_image(encode_image(rgb)), rgb)
    six = np.random.default_rng(1).integers(0, 2**12, (50, 50, 6), dtype=np.uint16)
    np.testing.assert_array_equal(decode_image(encode_image(six)), six)
    with pytest.raises(ValueError, match="undecodable image"):
        decode_image(b"not an image")
    with pytest.raises(ValueError, match="empty"):
        decode_image(b"")
