"""MaskCheck, with plain calls: every way a byte stream of client frames can be cut into feeds.

RFC 6455 section 5.1: every client frame is masked. The walker must say True for any stream of
masked frames however it is split, and False once an unmasked frame's header has arrived,
wherever that frame sits in the stream and however its header is split across feeds.
"""

from __future__ import annotations

import itertools

import pytest

from realtime.core.frames import MaskCheck

SIZES = (0, 1, 125, 126, 65535, 65536)  # each length encoding and both sides of its bounds
MASK_KEY = b"\x11\x22\x33\x44"


def frame(size: int, *, masked: bool = True) -> bytes:
    """One binary frame of `size` payload bytes. The payload is made of bytes that look like
    an unmasked frame header, so a walker that fails to skip a payload reads them as one."""
    b1 = 0x80 if masked else 0x00
    if size < 126:
        header = bytes([0x82, b1 | size])
    elif size < 65536:
        header = bytes([0x82, b1 | 126]) + size.to_bytes(2, "big")
    else:
        header = bytes([0x82, b1 | 127]) + size.to_bytes(8, "big")
    if masked:
        header += MASK_KEY
    payload = (b"\x81\x05" * (size // 2 + 1))[:size]
    return header + payload


def header_len(size: int, *, masked: bool = True) -> int:
    extra = 0 if size < 126 else 2 if size < 65536 else 8
    return 2 + extra + (4 if masked else 0)


MASKED = [frame(n) for n in SIZES]
STREAM = b"".join(MASKED)


def boundaries() -> list[int]:
    """The offset where each frame of STREAM starts, and its end."""
    return [0, *itertools.accumulate(len(f) for f in MASKED)]


def feed_all(parts: list[memoryview]) -> bool:
    """Feed the parts in order, as a connection would, stopping at the first False."""
    check = MaskCheck()
    return all(check.feed(p) for p in parts)


def cut(data: bytes, *points: int) -> list[memoryview]:
    view = memoryview(data)
    edges = [0, *points, len(data)]
    return [view[a:b] for a, b in itertools.pairwise(edges)]


# ---- masked streams ---------------------------------------------------------------------------


def test_frame_builder_matches_the_rfc_length_encodings():
    assert [len(f) - n for f, n in zip(MASKED, SIZES, strict=True)] == [6, 6, 6, 8, 8, 14]
    assert MASKED[3][1] == 0x80 | 126 and MASKED[5][1] == 0x80 | 127
    assert frame(125, masked=False)[1] == 125


def test_whole_stream_in_one_feed():
    assert MaskCheck().feed(STREAM) is True


def test_masked_stream_at_every_two_way_split():
    view = memoryview(STREAM)
    for k in range(len(STREAM) + 1):
        check = MaskCheck()
        assert check.feed(view[:k]) and check.feed(view[k:]), f"split at byte {k}"


def test_masked_stream_one_byte_at_a_time():
    check = MaskCheck()
    view = memoryview(STREAM)
    for i in range(len(STREAM)):
        assert check.feed(view[i : i + 1]), f"byte {i}"


def test_masked_stream_with_every_header_cut_in_three():
    """Each frame's header cut at every pair of points inside it, around its neighbours."""
    for start, size in zip(boundaries(), SIZES, strict=False):
        hl = header_len(size)
        for a, b in itertools.combinations(range(start, start + hl + 1), 2):
            assert feed_all(cut(STREAM, a, b)), f"cuts at {a}, {b}"


def test_empty_feeds_between_the_parts_change_nothing():
    check = MaskCheck()
    parts = cut(STREAM, 1, 2, 6, 7, 140, 141, 142)
    assert all(check.feed(b"") and check.feed(p) for p in parts) and check.feed(b"")


def test_masked_stream_repeated_stays_in_step():
    assert feed_all(cut(STREAM * 3, len(STREAM) - 3, 2 * len(STREAM) + 5))


# ---- an unmasked frame ------------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("position", range(len(SIZES) + 1))
def test_unmasked_frame_at_any_position_and_any_split(size, position):
    frames = [*MASKED[:position], frame(size, masked=False), *MASKED[position:]]
    stream = b"".join(frames)
    start = sum(len(f) for f in MASKED[:position])
    hdr_end = start + header_len(size, masked=False)  # the walker decides once this arrived

    assert MaskCheck().feed(stream) is False
    # Two feeds, cut anywhere near the unmasked header: nothing is flagged before its second
    # byte (the mask bit) has arrived, and everything is once its whole header has.
    for k in range(max(0, start - 16), min(len(stream), hdr_end + 16) + 1):
        check = MaskCheck()
        view = memoryview(stream)
        first = check.feed(view[:k])
        if k < start + 2:
            assert first is True, f"flagged too early, split at {k}"
        if k >= hdr_end:
            assert first is False, f"not flagged, split at {k}"
        if first:
            assert check.feed(view[k:]) is False, f"missed, split at {k}"
    # The unmasked header cut at every pair of points inside it.
    for a, b in itertools.combinations(range(start, hdr_end + 1), 2):
        assert feed_all(cut(stream, a, b)) is False, f"cuts at {a}, {b}"


@pytest.mark.parametrize("size", SIZES)
def test_unmasked_frame_fed_one_byte_at_a_time_is_flagged_at_its_header(size):
    """After a masked frame of each size: the False comes exactly at the unmasked header's
    last byte, and not one byte earlier."""
    for prefix in MASKED:
        stream = prefix + frame(size, masked=False)
        hdr_end = len(prefix) + header_len(size, masked=False)
        check = MaskCheck()
        view = memoryview(stream)
        results = [check.feed(view[i : i + 1]) for i in range(hdr_end)]
        assert all(results[:-1]) and results[-1] is False
