"""The repository format, piece by piece: codec, pack, index, tree, snapshot, chunker.

Each decoder is the line of defence against a damaged or hostile bucket, so besides the
round trips every test here feeds it truncated, corrupted or lying input and expects an
``IntegrityError`` (never another exception, never a silent wrong answer).
"""

from __future__ import annotations

import base64
import io
import json
import os
import random
import string
import tracemalloc
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from hometier.errors import IntegrityError
from hometier.repo import BlobId, BlobType, Repository, chunker, codec
from hometier.repo.chunker import Chunking, iter_chunks
from hometier.repo.ids import Compression, PackId, blob_id, plain_hash
from hometier.repo.index import (
    HEAD,
    PACK,
    Index,
    PackRecord,
    decode_index,
    encode_index,
)
from hometier.repo.index import (
    MAGIC as INDEX_MAGIC,
)
from hometier.repo.pack import (
    CHECKSUM_LEN,
    COUNT,
    ENTRY,
    FOOTER,
    MAX_ENTRIES,
    Entry,
    PackBuilder,
    encode_entries,
    iter_blobs,
    parse_trailer,
    trailer_size,
)
from hometier.repo.pack import (
    MAGIC as PACK_MAGIC,
)
from hometier.repo.snapshot import Snapshot, Stats, user_key
from hometier.repo.tree import MAX_NAME, Node, decode_tree, encode_tree
from hometier.store import open_store

MiB = 1024 * 1024
KEY = bytes(range(32))


def _bid(n: int) -> BlobId:
    return BlobId(bytes([n]) * 32)


# --- codec ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"a",
        b"x" * 63,
        bytes(64),
        b"all work and no play makes jack a dull boy\n" * 20_000,
        random.Random(1).randbytes(100_000),
    ],
    ids=["empty", "one", "63B", "64-zeros", "text", "random"],
)
def test_codec_round_trip(data: bytes) -> None:
    comp, stored = codec.encode(data)
    assert codec.decode(comp, stored, len(data)) == data
    assert codec.decode(int(comp), memoryview(stored), len(data)) == data


def test_codec_compresses_what_pays_and_stores_the_rest_raw() -> None:
    text = b"the quick brown fox jumps over the lazy dog\n" * 1000
    comp, stored = codec.encode(text)
    assert comp == Compression.ZSTD and len(stored) < len(text) // 10

    noise = random.Random(2).randbytes(256 * 1024)
    comp, stored = codec.encode(noise)
    assert comp == Compression.RAW and stored == noise

    tiny = b"tiny but repetitive " * 3
    assert codec.encode(tiny) == (Compression.RAW, tiny)


def test_codec_refuses_to_store_a_compressed_form_that_does_not_decompress_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A compressor bug must not reach the bucket: encode checks by decompressing."""

    class LyingCompressor:
        def compress(self, data: bytes) -> bytes:
            return zstandard.ZstdCompressor().compress(data[:-1] + b"!")

    monkeypatch.setattr(codec, "_cctx", LyingCompressor)
    data = b"compressible " * 1000
    assert codec.encode(data) == (Compression.RAW, data)


@pytest.mark.parametrize("comp", [Compression.RAW, Compression.ZSTD])
@pytest.mark.parametrize("delta", [-1, 1, 1000])
def test_codec_decode_refuses_a_wrong_raw_len(comp: Compression, delta: int) -> None:
    data = b"some blob content, long enough to be compressed " * 100
    stored = zstandard.ZstdCompressor().compress(data) if comp == Compression.ZSTD else data
    assert codec.decode(comp, stored, len(data)) == data
    with pytest.raises(IntegrityError):
        codec.decode(comp, stored, len(data) + delta)


@pytest.mark.parametrize(
    "stored",
    [
        b"",
        b"garbage, not a zstd frame at all",
        bytes(100),
        b"\x28\xb5\x2f\xfd" + bytes(20),  # zstd magic, then nonsense
    ],
    ids=["empty", "text", "zeros", "magic-then-zeros"],
)
def test_codec_decode_refuses_garbage(stored: bytes) -> None:
    with pytest.raises(IntegrityError):
        codec.decode(Compression.ZSTD, stored, 100)


def test_codec_decode_refuses_a_truncated_frame() -> None:
    data = random.Random(3).randbytes(5000) * 4
    frame = zstandard.ZstdCompressor().compress(data)
    for cut in (1, 5, len(frame) // 2, len(frame) - 4):
        with pytest.raises(IntegrityError):
            codec.decode(Compression.ZSTD, frame[:cut], len(data))


def test_codec_decode_refuses_unknown_compression() -> None:
    with pytest.raises(IntegrityError, match="unknown compression"):
        codec.decode(7, b"abc", 3)


def test_codec_decode_refuses_a_declared_size_above_the_limit_without_decoding() -> None:
    with pytest.raises(IntegrityError, match="limit"):
        codec.decode(Compression.RAW, b"", codec.MAX_BLOB + 1)


def _zero_frame(size: int, *, content_size: bool = True) -> bytes:
    out = io.BytesIO()
    cctx = zstandard.ZstdCompressor(level=1, write_content_size=content_size)
    with cctx.stream_writer(out, size=size if content_size else -1, closefd=False) as w:
        block = bytes(MiB)
        for _ in range(size // MiB):
            w.write(block)
    return out.getvalue()


@pytest.mark.parametrize("content_size", [True, False], ids=["size-in-header", "no-size"])
def test_codec_decode_refuses_a_bomb_in_bounded_memory(content_size: bool) -> None:
    bomb = _zero_frame(128 * MiB, content_size=content_size)
    assert len(bomb) < 64 * 1024
    tracemalloc.start()
    try:
        with pytest.raises(IntegrityError):
            codec.decode(Compression.ZSTD, bomb, 100)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * MiB, f"decoding a bomb allocated {peak} bytes"


def test_codec_decodes_concatenated_frames() -> None:
    # Streaming writers may emit several frames; they decode as one blob.
    a, b = b"first part " * 100, b"second part " * 100
    stored = zstandard.ZstdCompressor().compress(a) + zstandard.ZstdCompressor().compress(b)
    assert codec.decode(Compression.ZSTD, stored, len(a) + len(b)) == a + b


# --- pack ----------------------------------------------------------------------------------


def _sealed_pack(n: int = 3) -> tuple[PackId, bytes, list[Entry], list[bytes]]:
    builder = PackBuilder()
    raws = [f"blob number {i} ".encode() * (50 * (i + 1)) for i in range(n)]
    for i, raw in enumerate(raws):
        comp, stored = codec.encode(raw)
        typ = BlobType.TREE if i % 2 else BlobType.DATA
        builder.add(blob_id(KEY, raw), typ, comp, stored, len(raw))
    pid, data, entries = builder.seal()
    return pid, data, entries, raws


def test_pack_seal_and_parse_trailer_round_trip() -> None:
    pid, data, entries, raws = _sealed_pack()
    assert pid == plain_hash(data)
    assert data.endswith(PACK_MAGIC)
    assert parse_trailer(data, len(data)) == entries
    # The trailer alone (what a ranged read of the pack's end fetches) is enough.
    tail = data[-trailer_size(len(entries)) :]
    assert parse_trailer(tail, len(data)) == entries
    assert parse_trailer(memoryview(data)[-trailer_size(len(entries)) - 7 :], len(data)) == entries
    for (e, stored), raw in zip(iter_blobs(data, entries), raws, strict=True):
        assert codec.decode(e.comp, stored, e.raw_len) == raw
        assert e.id == blob_id(KEY, raw)
    assert [e.type for e in entries] == [BlobType.DATA, BlobType.TREE, BlobType.DATA]


def test_empty_pack_round_trip() -> None:
    pid, data, entries = PackBuilder().seal()
    assert entries == [] and parse_trailer(data, len(data)) == []
    assert len(data) == trailer_size(0)


def test_pack_truncated_at_any_point_of_its_trailer_is_refused() -> None:
    _, data, entries, _ = _sealed_pack()
    for cut in range(1, trailer_size(len(entries)) + 1):
        with pytest.raises(IntegrityError):
            parse_trailer(data[:-cut], len(data) - cut)
    with pytest.raises(IntegrityError, match="too short"):
        parse_trailer(data[-FOOTER.size + 1 :], len(data))


def test_tail_shorter_than_the_trailer_is_refused() -> None:
    _, data, entries, _ = _sealed_pack()
    with pytest.raises(IntegrityError):
        parse_trailer(data[-trailer_size(len(entries)) + 1 :], len(data))


def test_every_corrupted_trailer_byte_is_refused() -> None:
    _, data, entries, _ = _sealed_pack()
    start = len(data) - trailer_size(len(entries))
    for pos in range(start, len(data)):
        for flip in (0x01, 0x80, 0xFF):
            bad = bytearray(data)
            bad[pos] ^= flip
            with pytest.raises(IntegrityError):
                parse_trailer(bytes(bad), len(bad))


def _forge_trailer(entries_raw: bytes, count: int, trailer_len: int | None = None) -> bytes:
    table = entries_raw + COUNT.pack(count)
    checksum = plain_hash(table)[:CHECKSUM_LEN]
    length = len(table) + CHECKSUM_LEN if trailer_len is None else trailer_len
    return table + checksum + FOOTER.pack(length, PACK_MAGIC)


def test_entries_pointing_outside_the_blob_area_are_refused() -> None:
    area = b"x" * 100
    inside = Entry(_bid(1), BlobType.DATA, Compression.RAW, 0, 100, 100)
    pack = area + _forge_trailer(encode_entries([inside]), 1)
    assert parse_trailer(pack, len(pack)) == [inside]
    for offset, length in ((1, 100), (100, 1), (2**32 - 1, 2**32 - 1)):
        e = Entry(_bid(1), BlobType.DATA, Compression.RAW, offset, length, length)
        pack = area + _forge_trailer(encode_entries([e]), 1)
        with pytest.raises(IntegrityError, match="outside"):
            parse_trailer(pack, len(pack))
    # The right trailer with a smaller pack size than the real one is refused too.
    pack = area + _forge_trailer(encode_entries([inside]), 1)
    with pytest.raises(IntegrityError):
        parse_trailer(pack, len(pack) - 1)


def test_a_trailer_that_lies_about_its_counts_is_refused_even_with_a_good_checksum() -> None:
    e = Entry(_bid(1), BlobType.DATA, Compression.RAW, 0, 0, 0)
    with pytest.raises(IntegrityError, match="too many"):
        parse_trailer(_forge_trailer(b"", MAX_ENTRIES + 1), 10**9)
    with pytest.raises(IntegrityError, match="wrong length"):
        parse_trailer(_forge_trailer(encode_entries([e]), 2), 10**9)
    with pytest.raises(IntegrityError, match="wrong length"):
        parse_trailer(_forge_trailer(encode_entries([e, e]), 1), 10**9)
    raw = bytearray(encode_entries([e]))
    raw[32] = 9  # blob type 9
    with pytest.raises(IntegrityError, match="unknown blob type"):
        parse_trailer(_forge_trailer(bytes(raw), 1), 10**9)
    raw = bytearray(encode_entries([e]))
    raw[33] = 5  # compression 5
    with pytest.raises(IntegrityError, match="unknown"):
        parse_trailer(_forge_trailer(bytes(raw), 1), 10**9)


@pytest.mark.parametrize("trailer_len", [0, COUNT.size + CHECKSUM_LEN - 1, 10**6, 2**32 - 1])
def test_trailer_length_out_of_range_is_refused(trailer_len: int) -> None:
    with pytest.raises(IntegrityError):
        parse_trailer(b"\0" * 64 + _forge_trailer(b"", 0, trailer_len), 10**6)


def test_pack_without_magic_is_refused() -> None:
    _, data, _, _ = _sealed_pack()
    with pytest.raises(IntegrityError, match="magic"):
        parse_trailer(data[:-8] + b"HTPACK\x00\x02", len(data))


# --- index ---------------------------------------------------------------------------------


def _records() -> list[PackRecord]:
    out = []
    for p in range(3):
        entries = [
            Entry(_bid(10 * p + i), BlobType(i % 2), Compression(i % 2), i * 100, 90, 200 + i)
            for i in range(p + 1)
        ]
        out.append(PackRecord(PackId(bytes([200 + p]) * 32), 1000 * (p + 1), entries))
    return out


def test_index_round_trip() -> None:
    recs = _records()
    data = encode_index(recs)
    assert decode_index(data) == recs
    assert encode_index(recs) == data, "the same packs encode to the same bytes"
    assert decode_index(encode_index([])) == []


def test_index_object_is_one_zstd_frame_of_the_documented_layout() -> None:
    recs = _records()
    body = zstandard.ZstdDecompressor().stream_reader(encode_index(recs)).read()
    magic, npacks = HEAD.unpack_from(body, 0)
    assert (magic, npacks) == (INDEX_MAGIC, 3)
    pid, size, count = PACK.unpack_from(body, HEAD.size)
    assert (pid, size, count) == (recs[0].id, recs[0].size, 1)
    assert body[-CHECKSUM_LEN:] == plain_hash(body[:-CHECKSUM_LEN])[:CHECKSUM_LEN]


def test_truncated_index_is_refused() -> None:
    data = encode_index(_records())
    for cut in range(1, len(data)):
        with pytest.raises(IntegrityError):
            decode_index(data[:cut])


def test_corrupted_index_is_refused_or_decodes_to_the_same_records() -> None:
    recs = _records()
    data = encode_index(recs)
    for pos in range(len(data)):
        bad = bytearray(data)
        bad[pos] ^= 0xFF
        try:
            got = decode_index(bytes(bad))
        except IntegrityError:
            continue
        # Only a bit that does not change the content (a frame flag) may pass.
        assert got == recs, f"flipping byte {pos} decoded to other records"


def _compress_body(body: bytes) -> bytes:
    return zstandard.ZstdCompressor().compress(body + plain_hash(body)[:CHECKSUM_LEN])


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (HEAD.pack(b"NOTINDEX", 0), "not an index"),
        (HEAD.pack(INDEX_MAGIC, 1), "truncated"),
        (HEAD.pack(INDEX_MAGIC, 1) + PACK.pack(b"p" * 32, 10, 2) + bytes(ENTRY.size), "truncated"),
        (HEAD.pack(INDEX_MAGIC, 0) + b"extra", "trailing"),
        (HEAD.pack(INDEX_MAGIC, 2**32 - 1), "truncated"),
    ],
    ids=["magic", "no-pack", "short-entries", "trailing", "huge-count"],
)
def test_index_with_a_good_checksum_but_bad_layout_is_refused(body: bytes, words: str) -> None:
    with pytest.raises(IntegrityError, match=words):
        decode_index(_compress_body(body))


@pytest.mark.parametrize("data", [b"", b"not zstd", bytes(64)], ids=["empty", "text", "zeros"])
def test_index_that_is_not_zstd_is_refused(data: bytes) -> None:
    with pytest.raises(IntegrityError):
        decode_index(data)


def test_in_memory_index_keeps_the_first_location_and_every_pack() -> None:
    idx = Index()
    recs = _records()
    for r in recs:
        idx.add_pack(r)
    dup = PackRecord(
        PackId(b"d" * 32), 5, [Entry(_bid(0), BlobType.DATA, Compression.RAW, 7, 1, 1)]
    )
    idx.add_pack(dup)
    loc = idx.get(_bid(0))
    assert loc is not None and loc.pack == recs[0].id and loc.offset == 0
    assert idx.packs() == {**{r.id: r.size for r in recs}, dup.id: 5}
    assert len(idx) == sum(len(r.entries) for r in recs)
    assert _bid(0) in idx and _bid(99) not in idx


# --- tree ----------------------------------------------------------------------------------


def _all_kinds() -> list[Node]:
    return sorted(
        [
            Node(
                name=b"a-file",
                type="file",
                mode=0o4755,
                uid=1000,
                gid=100,
                mtime_ns=1_700_000_000_123_456_789,
                atime_ns=-5,
                ctime_ns=3,
                ino=42,
                size=300,
                content=[_bid(1), _bid(2)],
                xattrs={b"user.b": b"\x00\xff", b"user.a": b"text"},
            ),
            Node(
                name=b"sparse",
                type="file",
                mode=0o600,
                size=10**9,
                content=[_bid(3)],
                sparse=[(0, 0), (4096, 100), (10**9 - 1, 1)],
            ),  # fmt: skip
            Node(name=b"hardlink", type="file", mode=0o644, size=300, link=b"dir/a-file"),
            Node(name=b"dir", type="dir", mode=0o2775, subtree=_bid(4)),
            Node(name=b"link", type="symlink", mode=0o777, target=b"../../etc"),
            Node(name=b"fifo", type="fifo", mode=0o640),
            Node(name=b"tty", type="chr", mode=0o620, rdev=(4, 1)),
            Node(name=b"disk", type="blk", mode=0o660, rdev=(8, 0)),
            Node(name="snowman-\u2603".encode(), type="file", content=[]),
            Node(name=b"line\nbreak", type="file"),
        ],
        key=lambda n: n.name,
    )


def test_tree_round_trip_keeps_every_field() -> None:
    nodes = _all_kinds()
    assert decode_tree(encode_tree(nodes)) == nodes


def test_tree_encoding_is_canonical_and_deterministic() -> None:
    nodes = _all_kinds()
    raw = encode_tree(nodes)
    assert encode_tree(nodes) == raw
    assert encode_tree(decode_tree(raw)) == raw
    doc = json.loads(raw)
    assert (
        raw == json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    )
    assert doc["version"] == 1 and [n["name"] for n in doc["nodes"]][:1] == ["a-file"]
    # Attribute dicts in another insertion order encode the same.
    shuffled = _all_kinds()
    shuffled[0].xattrs = dict(reversed(list((shuffled[0].xattrs or {}).items())))
    assert encode_tree(shuffled) == raw


@pytest.mark.parametrize(
    "name", [b"\xff\xfe", b"caf\xe9", b"\xed\xa0\x80", b"ok-then-\x80"], ids=repr
)
def test_names_and_targets_that_are_not_utf8_round_trip_through_b64(name: bytes) -> None:
    nodes = [
        Node(name=name, type="symlink", target=b"dir/" + name),
        Node(name=name + b"-link", type="file", link=b"d/" + name),
    ]
    raw = encode_tree(nodes)
    doc = json.loads(raw)["nodes"]
    assert doc[0]["name_b64"] == base64.b64encode(name).decode() and "name" not in doc[0]
    assert base64.b64decode(doc[0]["target_b64"]) == b"dir/" + name
    assert base64.b64decode(doc[1]["link_b64"]) == b"d/" + name
    assert decode_tree(raw) == nodes


def test_utf8_names_are_stored_as_text() -> None:
    doc = json.loads(encode_tree([Node(name="ünïcødé".encode(), type="fifo")]))
    assert doc["nodes"][0]["name"] == "ünïcødé"


def _one(**fields: Any) -> bytes:
    node: dict[str, Any] = {"name": "f", "type": "file", "size": 0, "content": []}
    node.update(fields)
    node = {k: v for k, v in node.items() if v is not _DROP}
    return json.dumps({"version": 1, "nodes": [node]}).encode()


_DROP = object()
HEX = "ab" * 32

INVALID_TREES: dict[str, bytes] = {
    "not-json": b"{not json",
    "not-utf8": b"\xff\xfe\xfd",
    "deeply-nested": b"[" * 100_000 + b"]" * 100_000,
    "array": b"[]",
    "no-version": b'{"nodes": []}',
    "version-99": b'{"version": 99, "nodes": []}',
    "version-string": b'{"version": "1", "nodes": []}',
    "no-nodes": b'{"version": 1}',
    "nodes-object": b'{"version": 1, "nodes": {}}',
    "node-not-object": b'{"version": 1, "nodes": ["f"]}',
    "no-name": _one(name=_DROP),
    "name-not-string": _one(name=5),
    "name-b64-not-string": _one(name=_DROP, name_b64=5),
    "name-b64-invalid": _one(name=_DROP, name_b64="!!!"),
    "name-empty": _one(name=""),
    "name-dot": _one(name="."),
    "name-dotdot": _one(name=".."),
    "name-slash": _one(name="a/b"),
    "name-absolute": _one(name="/etc"),
    "name-nul": _one(name="a\u0000b"),
    "name-b64-dotdot": _one(name=_DROP, name_b64=base64.b64encode(b"..").decode()),
    "name-b64-slash": _one(name=_DROP, name_b64=base64.b64encode(b"\xff/x").decode()),
    "name-too-long": _one(name="n" * (MAX_NAME + 1)),
    "type-unknown": _one(type="socket"),
    "type-missing": _one(type=_DROP),
    "mode-negative": _one(mode=-1),
    "mode-too-big": _one(mode=0o10000),
    "mode-string": _one(mode="0755"),
    "mode-float": _one(mode=420.0),
    "mode-bool": _one(mode=True),
    "uid-too-big": _one(uid=2**32),
    "gid-negative": _one(gid=-1),
    "mtime-too-big": _one(mtime=2**63),
    "atime-too-small": _one(atime=-(2**63) - 1),
    "ino-negative": _one(ino=-1),
    "size-negative": _one(size=-1),
    "size-too-big": _one(size=2**62 + 1),
    "content-not-list": _one(content="ab" * 32),
    "content-id-short": _one(content=["ab" * 31]),
    "content-id-not-hex": _one(content=["zz" * 32]),
    "content-id-not-string": _one(content=[5]),
    "link-dotdot": _one(link="../etc/passwd"),
    "link-absolute": _one(link="/etc/passwd"),
    "link-empty": _one(link=""),
    "link-double-slash": _one(link="a//b"),
    "link-trailing-slash": _one(link="a/"),
    "link-dot": _one(link="a/./b"),
    "link-nul": _one(link="a\u0000"),
    "link-not-string": _one(link=["a"]),
    "sparse-not-list": _one(size=10, sparse={"0": 1}),
    "sparse-extent-short": _one(size=10, sparse=[[0]]),
    "sparse-extent-float": _one(size=10, sparse=[[0, 1.0]]),
    "sparse-extent-negative": _one(size=10, sparse=[[0, -1]]),
    "sparse-overlap": _one(size=10, sparse=[[0, 5], [4, 2]]),
    "sparse-unsorted": _one(size=10, sparse=[[5, 1], [0, 1]]),
    "sparse-beyond-size": _one(size=10, sparse=[[8, 3]]),
    "dir-no-subtree": _one(type="dir"),
    "dir-subtree-short": _one(type="dir", subtree="ab"),
    "dir-subtree-not-hex": _one(type="dir", subtree="g" * 64),
    "symlink-no-target": _one(type="symlink"),
    "symlink-empty-target": _one(type="symlink", target=""),
    "symlink-nul-target": _one(type="symlink", target="a\u0000b"),
    "symlink-target-too-long": _one(type="symlink", target="t" * (MAX_NAME + 1)),
    "symlink-target-b64-invalid": _one(type="symlink", target_b64="@@"),
    "chr-no-rdev": _one(type="chr"),
    "blk-rdev-short": _one(type="blk", rdev=[8]),
    "chr-rdev-negative": _one(type="chr", rdev=[-1, 0]),
    "chr-rdev-too-big": _one(type="chr", rdev=[0, 2**32]),
    "chr-rdev-string": _one(type="chr", rdev=["8", "0"]),
    "xattrs-not-object": _one(xattrs=[["dXNlci5h", "eA=="]]),
    "xattrs-key-not-b64": _one(xattrs={"user.a": "eA=="}),
    "xattrs-value-not-b64": _one(xattrs={"dXNlci5h": "not base64!"}),
    "xattrs-value-not-string": _one(xattrs={"dXNlci5h": 5}),
    "duplicate-names": json.dumps(
        {"version": 1, "nodes": [{"name": "f", "type": "fifo"}, {"name": "f", "type": "fifo"}]}
    ).encode(),
    "duplicate-names-text-and-b64": json.dumps(
        {
            "version": 1,
            "nodes": [{"name": "f", "type": "fifo"}, {"name_b64": "Zg==", "type": "fifo"}],
        }
    ).encode(),
}


@pytest.mark.parametrize("raw", list(INVALID_TREES.values()), ids=list(INVALID_TREES))
def test_decode_tree_refuses(raw: bytes) -> None:
    with pytest.raises(IntegrityError):
        decode_tree(raw)


def test_decode_tree_refuses_too_many_nodes(monkeypatch: pytest.MonkeyPatch) -> None:
    import hometier.repo.tree as tree_mod

    monkeypatch.setattr(tree_mod, "MAX_NODES", 3)
    fifo = {"type": "fifo"}
    ok = {"version": 1, "nodes": [{**fifo, "name": n} for n in "abc"]}
    assert len(decode_tree(json.dumps(ok).encode())) == 3
    ok["nodes"].append({**fifo, "name": "d"})
    with pytest.raises(IntegrityError):
        decode_tree(json.dumps(ok).encode())


def test_decode_tree_accepts_the_limits() -> None:
    fields = {
        "mode": 0o7777,
        "uid": 2**32 - 1,
        "gid": 0,
        "mtime": 2**63 - 1,
        "atime": -(2**63),
        "ino": 2**64 - 1,
        "size": 2**62,
        "name": "n" * MAX_NAME,
        "sparse": [[0, 0], [2**62, 0]],
    }
    (node,) = decode_tree(_one(**fields))
    assert node.size == 2**62 and node.mode == 0o7777 and len(node.name) == MAX_NAME
    (node,) = decode_tree(_one(link="a/b/c"))
    assert node.link == b"a/b/c" and node.content == []


# --- snapshot ------------------------------------------------------------------------------


def _snapshot() -> Snapshot:
    return Snapshot(
        user="alice",
        time_ns=1_764_115_200_123_456_789,
        tree=_bid(7),
        root={"mode": 0o750, "uid": 1000, "gid": 100, "mtime": 5, "atime": 6},
        hostname="hub-1",
        source="/home/alice",
        parent=None,
        stats=Stats(files=3, dirs=2, bytes=300, skipped=["s: socket not archived"]),
        program="hometier 0.1.0",
    )


def test_snapshot_round_trip() -> None:
    snap = _snapshot()
    data = snap.to_bytes()
    assert snap.to_bytes() == data
    sid = plain_hash(data).hex()
    back = Snapshot.from_bytes(data, sid)  # type: ignore[arg-type]
    snap.id = back.id
    assert back == snap
    assert back.id == sid
    doc = json.loads(data)
    assert doc["time"] == "2025-11-26T00:00:00.123457Z"
    assert doc["tree"] == _bid(7).hex()


def _snapshot_doc(**changes: Any) -> bytes:
    doc = json.loads(_snapshot().to_bytes())
    doc.update(changes)
    doc = {k: v for k, v in doc.items() if v is not _DROP}
    return json.dumps(doc).encode()


INVALID_SNAPSHOTS: dict[str, bytes] = {
    "not-json": b"\x89PNG\r\n",
    "empty": b"",
    "array": b"[1, 2]",
    "version-2": _snapshot_doc(version=2),
    "no-version": _snapshot_doc(version=_DROP),
    "no-tree": _snapshot_doc(tree=_DROP),
    "tree-short": _snapshot_doc(tree="ab" * 31),
    "tree-not-hex": _snapshot_doc(tree="../../etc/passwd"),
    "tree-number": _snapshot_doc(tree=5),
    "no-user": _snapshot_doc(user=_DROP),
    "no-time": _snapshot_doc(time_ns=_DROP),
    "time-string": _snapshot_doc(time_ns="soon"),
    "time-nan": _snapshot_doc(time_ns=float("nan")),
    "time-infinite": _snapshot_doc(time_ns=float("inf")),
    "root-list": _snapshot_doc(root=[1, 2, 3]),
    "root-value-string": _snapshot_doc(root={"mode": "rwx"}),
    "root-value-infinite": _snapshot_doc(root={"mode": float("inf")}),
    "stats-list": _snapshot_doc(stats=[1]),
}


@pytest.mark.parametrize("raw", list(INVALID_SNAPSHOTS.values()), ids=list(INVALID_SNAPSHOTS))
def test_snapshot_from_bytes_refuses(raw: bytes) -> None:
    with pytest.raises(IntegrityError):
        Snapshot.from_bytes(raw, plain_hash(raw).hex())  # type: ignore[arg-type]


def test_snapshot_ignores_unknown_stats_fields() -> None:
    doc = json.loads(_snapshot().to_bytes())
    doc["stats"]["from_the_future"] = 1
    snap = Snapshot.from_bytes(json.dumps(doc).encode(), "x" * 64)  # type: ignore[arg-type]
    assert snap.stats.files == 3


SAFE = set(string.ascii_letters + string.digits + "_-%")


@pytest.mark.parametrize(
    ("user", "key"),
    [
        ("alice", "alice"),
        ("a_b-c9", "a_b-c9"),
        ("..", "%2E%2E"),
        (".", "%2E"),
        ("a/b", "a%2Fb"),
        ("../../etc", "%2E%2E%2F%2E%2E%2Fetc"),
        ("%", "%25"),
        ("%2E", "%252E"),
        ("", "%"),
        ("a b", "a%20b"),
        ("ünï", "%C3%BCn%C3%AF"),
        ("☃", "%E2%98%83"),
        ("\\", "%5C"),
        ("a\x00b", "a%00b"),
        ("\udcff", "%FF"),  # a surrogate-escaped byte from a POSIX name
    ],
)
def test_user_key_escapes_hostile_names(user: str, key: str) -> None:
    assert user_key(user) == key
    assert set(key) <= SAFE and "/" not in key and key not in (".", "..")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(max_size=12), min_size=2, max_size=6, unique=True))
def test_user_key_is_one_path_component_and_injective(users: list[str]) -> None:
    keys = [user_key(u) for u in users]
    assert len(set(keys)) == len(keys)
    for k in keys:
        assert k and set(k) <= SAFE and k not in (".", "..")


def test_user_key_accepts_any_str() -> None:
    """A user name is a ``str`` read from JSON (the Hub API, a snapshot document), where
    ``"\\ud800"`` is valid: the key must still be computed, not raise."""
    key = user_key("a\ud800")
    assert key.startswith("a%") and set(key) <= SAFE


def test_hostile_user_names_stay_in_their_own_folder() -> None:
    repo = Repository.create(open_store(f"memory://{uuid.uuid4().hex}"))
    for user in ("../../config", "alice/../bob", "%2E%2E", "bob"):
        repo.save_snapshot(Snapshot(user=user, time_ns=1, tree=_bid(1)))
    keys = repo.snapshot_keys()
    assert all(k.count("/") == 2 and k.startswith("snapshots/") for k in keys), keys
    assert repo.store.get("config")  # not overwritten
    assert [s.user for s in repo.list_snapshots("bob")] == ["bob"]
    assert [s.user for s in repo.list_snapshots("../../config")] == ["../../config"]
    assert [s.user for s in repo.list_snapshots("%2E%2E")] == ["%2E%2E"]


# --- chunker -------------------------------------------------------------------------------


def _fd_with(data: bytes) -> int:
    fd = os.memfd_create("chunker-test")
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _chunks(data: bytes, params: Chunking, length: int | None = None) -> list[bytes]:
    fd = _fd_with(data)
    try:
        return [bytes(c) for c in iter_chunks(fd, len(data) if length is None else length, params)]
    finally:
        os.close(fd)


def _whole_buffer_cuts(data: bytes, params: Chunking) -> list[int]:
    from fastcdc.fastcdc_cy import chunk_generator

    return [
        c.length for c in chunk_generator(data, params.min, params.avg, params.max, False, None)
    ]


@pytest.fixture(scope="module")
def big_buffer() -> bytes:
    return random.Random(42).randbytes(14 * MiB + 12345)


@pytest.mark.parametrize(
    "window",
    [chunker.WINDOW, 5 * MiB + 1, 4 * MiB, 1 * MiB, 300_007],
    ids=lambda w: f"window-{w}",
)
def test_cut_points_do_not_depend_on_the_read_window(
    monkeypatch: pytest.MonkeyPatch, big_buffer: bytes, window: int
) -> None:
    params = Chunking()
    monkeypatch.setattr(chunker, "WINDOW", window)
    chunks = _chunks(big_buffer, params)
    assert b"".join(chunks) == big_buffer
    assert [len(c) for c in chunks] == _whole_buffer_cuts(big_buffer, params)
    assert len(chunks) >= 5


@pytest.mark.parametrize("window", [65_537, 4096, 1000, 1], ids=lambda w: f"window-{w}")
def test_cut_points_with_tiny_windows(monkeypatch: pytest.MonkeyPatch, window: int) -> None:
    params = Chunking(min=2048, avg=8192, max=32768)
    data = random.Random(7).randbytes(300_000 if window > 1 else 40_000)
    monkeypatch.setattr(chunker, "WINDOW", window)
    chunks = _chunks(data, params)
    assert b"".join(chunks) == data
    assert [len(c) for c in chunks] == _whole_buffer_cuts(data, params)


@pytest.mark.parametrize("size", [MiB + 1, 3 * MiB + 7, 8 * MiB - 1, 8 * MiB, 8 * MiB + 1])
def test_a_file_smaller_than_the_window_gets_a_buffer_of_its_size(
    monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    """Cut as a whole buffer, and no 8 MiB buffer zeroed for a file of a few MiB; a
    file that grew since it was listed is read only up to the size listed."""
    params = Chunking()
    data = random.Random(size).randbytes(size + 4096)
    sizes: list[int] = []

    def spy(n: int) -> bytearray:
        sizes.append(n)
        return bytearray(n)

    monkeypatch.setattr(chunker, "bytearray", spy, raising=False)
    chunks = _in_a_new_thread(lambda: _chunks(data, params, length=size))
    assert b"".join(chunks) == data[:size]
    assert [len(c) for c in chunks] == _whole_buffer_cuts(data[:size], params)
    assert sizes == [min(size, chunker.WINDOW + params.max)]


def _in_a_new_thread(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on a thread of its own (no reading buffer kept yet); its result."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn).result()


def test_a_thread_reads_file_after_file_into_one_buffer(monkeypatch: pytest.MonkeyPatch) -> None:
    """A thread keeps its reading buffer for the next file (a new one is faulted in page
    by page) and grows it only for a larger file; the cuts are those of a fresh buffer."""
    params = Chunking()
    sizes_in = [3 * MiB, 2 * MiB + 5, 9 * MiB, 3 * MiB + 1, MiB + 1]
    files = [random.Random(n).randbytes(n) for n in sizes_in]
    made: list[int] = []

    def spy(n: int) -> bytearray:
        made.append(n)
        return bytearray(n)

    monkeypatch.setattr(chunker, "bytearray", spy, raising=False)
    got = _in_a_new_thread(lambda: [_chunks(f, params) for f in files])
    for data, chunks in zip(files, got, strict=True):
        assert b"".join(chunks) == data
        assert [len(c) for c in chunks] == _whole_buffer_cuts(data, params)
    assert made == [3 * MiB, chunker.WINDOW + params.max]


def test_a_second_or_unfinished_reader_of_a_thread_gets_its_own_buffer() -> None:
    """Two files cut at once on one thread (or one left half read) never share the
    thread's buffer: each chunk is still its file's bytes."""
    params = Chunking()
    a, b, c = (random.Random(n).randbytes(n) for n in (6 * MiB, 5 * MiB + 3, 4 * MiB + 9))

    def interleaved() -> tuple[list[bytes], list[bytes], list[bytes]]:
        fds = [_fd_with(x) for x in (a, b, c)]
        _chunks(bytes(9 * MiB), params)  # the thread now keeps a buffer large enough for all
        try:
            left = iter_chunks(fds[0], len(a), params)
            first = bytes(next(left))  # a is half read and stays so
            ga, gb = iter_chunks(fds[1], len(b), params), iter_chunks(fds[2], len(c), params)
            out_b: list[bytes] = []
            out_c: list[bytes] = []
            for x, y in zip(ga, gb, strict=False):
                out_b.append(bytes(x))
                out_c.append(bytes(y))
            out_b += [bytes(x) for x in ga]
            out_c += [bytes(y) for y in gb]
            rest = [bytes(x) for x in left]
            return [first, *rest], out_b, out_c
        finally:
            for fd in fds:
                os.close(fd)

    got_a, got_b, got_c = _in_a_new_thread(interleaved)
    assert b"".join(got_a) == a
    assert b"".join(got_b) == b
    assert b"".join(got_c) == c
    # A thread that read one file reads the next, smaller, one correctly into its buffer.
    got = _in_a_new_thread(lambda: [_chunks(x, params) for x in (a, c, b)])
    assert [b"".join(x) for x in got] == [a, c, b]


def test_chunk_sizes_stay_within_min_and_max(big_buffer: bytes) -> None:
    params = Chunking()
    sizes = [len(c) for c in _chunks(big_buffer, params)]
    assert all(params.min <= s <= params.max for s in sizes[:-1]), sizes
    assert 0 < sizes[-1] <= params.max
    # Zeros never match the cut mask: every chunk is as long as allowed.
    zeros = [len(c) for c in _chunks(bytes(9 * MiB), params)]
    assert zeros == [params.max, params.max, MiB]


def test_an_insertion_near_the_start_changes_only_the_first_chunks(big_buffer: bytes) -> None:
    params = Chunking()
    before = _chunks(big_buffer, params)
    edited = big_buffer[:1000] + b"a few inserted bytes" + big_buffer[1000:]
    after = _chunks(edited, params)
    changed = [c for c in after if c not in set(before)]
    assert 1 <= len(changed) <= 2, f"{len(changed)} of {len(after)} chunks changed"
    assert after[len(changed) :] == before[len(before) - (len(after) - len(changed)) :]


def test_small_files_are_one_chunk_and_empty_files_none() -> None:
    params = Chunking()
    assert _chunks(b"", params) == []
    assert _chunks(b"x", params) == [b"x"]
    one = random.Random(5).randbytes(params.small)
    assert _chunks(one, params) == [one]


@pytest.mark.parametrize("size", [100, 3 * MiB])
def test_a_file_shorter_than_announced_yields_what_is_there(size: int) -> None:
    data = random.Random(6).randbytes(size)
    chunks = _chunks(data, Chunking(), length=size + 5000)
    assert b"".join(chunks) == data


def test_only_length_bytes_are_read(big_buffer: bytes) -> None:
    data = big_buffer[: 3 * MiB]
    chunks = _chunks(data + b"beyond the length", Chunking(), length=len(data))
    assert b"".join(chunks) == data
