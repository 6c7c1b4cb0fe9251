"""The near-duplicate rule: pHash within a few bits AND grey thumbnails alike, checked by hand."""

from __future__ import annotations

import itertools

import numpy as np

from histoscan.audit.features import hamming_pairs, near_duplicates


def brute_force_pairs(hashes: np.ndarray, max_bits: int) -> set[tuple[int, int]]:
    """Every pair within ``max_bits``, by comparing all pairs bit by bit."""
    out = set()
    for i, j in itertools.combinations(range(len(hashes)), 2):
        if bin(int(hashes[i]) ^ int(hashes[j])).count("1") <= max_bits:
            out.add((i, j))
    return out


def test_banded_search_finds_exactly_the_brute_force_pairs() -> None:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**63, 40, dtype=np.uint64)
    # near copies: flip 0..6 random bits of some of the base hashes
    copies = []
    for k, h in enumerate(base[:30]):
        bits = rng.choice(64, size=k % 7, replace=False)
        copies.append(h ^ np.uint64(sum(1 << int(b) for b in bits)))
    hashes = np.concatenate([base, np.array(copies, dtype=np.uint64)])
    for max_bits in (0, 2, 4, 6):
        pairs, dist = hamming_pairs(hashes, max_bits)
        assert {tuple(p) for p in pairs.tolist()} == brute_force_pairs(hashes, max_bits)
        for (i, j), d in zip(pairs.tolist(), dist.tolist(), strict=True):
            assert d == bin(int(hashes[i]) ^ int(hashes[j])).count("1")


def test_same_phash_but_different_grey_thumbnail_is_not_a_near_duplicate() -> None:
    # four patches with one pHash; 1 differs from 0 by 40 grey levels in one cell (a different
    # patch whose sparse tissue sits in the same corner), 2 by 16 (the limit), 3 by 17
    phash = np.full(4, 0x0123_4567_89AB_CDEF, dtype=np.uint64)
    thumbs = np.full((4, 64), 120, dtype=np.uint8)
    thumbs[1, 10] = 160
    thumbs[2, 63] = 104
    thumbs[3, 0] = 137
    pairs, bits, groups = near_duplicates(phash, thumbs, np.ones(4, bool), 4, 16.0)
    # 0-2 (16 levels) is a pair; 0-1 (40), 0-3 (17), 1-2 (40), 1-3, 2-3 (33) are not
    assert pairs.tolist() == [[0, 2]]
    assert bits.tolist() == [0]
    assert [g.tolist() for g in groups] == [[0, 2]]


def test_bits_limit_candidates_and_groups() -> None:
    h0 = 0xFFFF_0000_FFFF_0000
    # from patch 0: 4 bits, 5 bits (9 from patch 1), identical (not a candidate), 1 bit
    phash = np.array([h0, h0 ^ 0b1111, h0 ^ (0b11111 << 20), h0, h0 ^ (1 << 40)], dtype=np.uint64)
    thumbs = np.zeros((5, 64), dtype=np.uint8)
    candidates = np.array([True, True, True, False, True])
    pairs, bits, groups = near_duplicates(phash, thumbs, candidates, 4, 16.0)
    # 0-1 (4 bits), 0-4 (1 bit); 1-4 is 5 bits, 2 is 5+ from all; 3 is not a candidate
    assert pairs.tolist() == [[0, 1], [0, 4]]
    assert bits.tolist() == [4, 1]
    assert [g.tolist() for g in groups] == [[0, 1, 4]]
    none, _, no_groups = near_duplicates(phash, thumbs, candidates, -1, 16.0)
    assert len(none) == 0 and no_groups == []
