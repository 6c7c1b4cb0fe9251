"""Per-patch features, hashes, duplicates, colour outliers and running pixel statistics.

Everything here works on one block of patches at a time, uint8 ``(N, 96, 96, 3)``, so the audit
streams through any number of patches with bounded memory: it keeps one feature row and one hash
per patch, and running sums (histograms, mean images) per class and region.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from histoscan.data.sources import PATCH_PX

CENTRE_PX = 32  # the label depends only on the centre 32x32 px
_LO = (PATCH_PX - CENTRE_PX) // 2
CENTRE = (slice(_LO, _LO + CENTRE_PX), slice(_LO, _LO + CENTRE_PX))
GROUPS = ("negative", "positive", "unlabelled")  # label 0, 1, -1
REGIONS = ("centre", "border")

# name -> what it measures; the order is the column order of the feature matrix
FEATURES: dict[str, str] = {
    "red_mean": "mean red, 0-255",
    "green_mean": "mean green, 0-255",
    "blue_mean": "mean blue, 0-255",
    "red_std": "standard deviation of red",
    "green_std": "standard deviation of green",
    "blue_std": "standard deviation of blue",
    "brightness": "mean grey level (0.299 R + 0.587 G + 0.114 B), 0-255",
    "saturation": "mean HSV saturation, 0-1",
    "tissue_fraction": "fraction of pixels with saturation >= the tissue threshold",
    "haematoxylin": "mean haematoxylin optical density (skimage rgb2hed)",
    "eosin": "mean eosin optical density (skimage rgb2hed)",
    "sharpness": "variance of the 4-neighbour Laplacian of the grey image",
    "centre_brightness_diff": "brightness of the centre 32x32 minus that of the border",
    "centre_saturation_diff": "saturation, centre minus border",
    "centre_tissue_diff": "tissue fraction, centre minus border",
    "centre_haematoxylin_diff": "haematoxylin, centre minus border",
    "centre_eosin_diff": "eosin, centre minus border",
}
COLOUR_FEATURES = (
    "red_mean", "green_mean", "blue_mean", "red_std", "green_std", "blue_std",
    "saturation", "haematoxylin", "eosin",
)  # fmt: skip

# channel -> (low, high) of its histogram; values outside fall into the end bins
HIST_RANGES: dict[str, tuple[float, float]] = {
    "red": (0, 256),
    "green": (0, 256),
    "blue": (0, 256),
    "hue": (0, 1),
    "saturation": (0, 1),
    "value": (0, 1),
    "haematoxylin": (0, 0.3),
    "eosin": (0, 0.3),
    "dab": (0, 0.3),
}
HIST_BINS = 64


def _od_lut() -> np.ndarray:
    """log(v/255)/log(1e-6) for v = 0..255: skimage's separate_stains, as a table."""
    rgb = np.maximum(np.arange(256) / 255.0, 1e-6)
    return (np.log(rgb) / np.log(1e-6)).astype(np.float32)


_OD = _od_lut()
_LUMA = (0.299, 0.587, 0.114)


def _stain(od: np.ndarray, k: int) -> np.ndarray:
    """Stain ``k`` (0 H, 1 E, 2 DAB) from optical-density planes ``(N, 3, H, W)``: (N, H, W)."""
    from skimage.color import hed_from_rgb

    m = hed_from_rgb.astype(np.float32)
    out = od[:, 0] * m[0, k] + od[:, 1] * m[1, k] + od[:, 2] * m[2, k]
    return np.maximum(out, 0, out=out)


def rgb_to_hed(block: np.ndarray) -> np.ndarray:
    """skimage.color.rgb2hed of uint8 ``(N, H, W, 3)`` in float32, by a lookup table."""
    od = _OD[np.moveaxis(block, -1, 1)]  # (N, 3, H, W)
    return np.stack([_stain(od, k) for k in range(3)], axis=-1)


def hsv_planes(planes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hue, saturation, value in [0, 1] of uint8 RGB planes ``(N, 3, H, W)``: float32 (N, H, W)."""
    r, g, b = planes[:, 0], planes[:, 1], planes[:, 2]
    mx = np.maximum(np.maximum(r, g), b)
    delta = (mx - np.minimum(np.minimum(r, g), b)).astype(np.float32)
    value = mx * np.float32(1 / 255)
    saturation = delta / np.maximum(mx, 1)
    r, g, b = (c.astype(np.float32) for c in (r, g, b))
    safe = np.maximum(delta, 1)
    hue = np.where(mx == planes[:, 0], (g - b) / safe, 0)
    hue = np.where(mx == planes[:, 1], 2 + (b - r) / safe, hue)
    hue = np.where(mx == planes[:, 2], 4 + (r - g) / safe, hue)
    hue = np.where(delta > 0, (hue / 6) % 1, 0).astype(np.float32)
    return hue, saturation.astype(np.float32), value.astype(np.float32)


def saturation_plane(planes: np.ndarray) -> np.ndarray:
    """HSV saturation of uint8 RGB planes ``(N, 3, H, W)``: float32 (N, H, W)."""
    r, g, b = planes[:, 0], planes[:, 1], planes[:, 2]
    mx = np.maximum(np.maximum(r, g), b)
    delta = (mx - np.minimum(np.minimum(r, g), b)).astype(np.float32)
    return delta / np.maximum(mx, 1)


def laplacian_variance(gray: np.ndarray) -> np.ndarray:
    """Variance of the 4-neighbour Laplacian of ``(N, H, W)`` grey images: (N,)."""
    lap = (
        gray[:, :-2, 1:-1] + gray[:, 2:, 1:-1] + gray[:, 1:-1, :-2] + gray[:, 1:-1, 2:]
    ) - 4 * gray[:, 1:-1, 1:-1]
    return lap.reshape(len(gray), -1).var(axis=1)


@dataclass
class PixelMaps:
    """Per-pixel maps of one block, computed once and shared by features, hashes and histograms."""

    planes: np.ndarray  # (N, 3, 96, 96) uint8 R, G, B
    gray: np.ndarray  # (N, 96, 96) float32, 0-255
    saturation: np.ndarray  # (N, 96, 96) float32, 0-1
    tissue: np.ndarray  # (N, 96, 96) bool
    od: np.ndarray  # (N, 3, 96, 96) float32 optical density of R, G, B
    haem: np.ndarray  # (N, 96, 96) float32 haematoxylin optical density
    eosin: np.ndarray

    @classmethod
    def of(cls, block: np.ndarray, tissue_saturation: float) -> PixelMaps:
        planes = np.ascontiguousarray(np.moveaxis(block, -1, 1))  # (N, 3, 96, 96)
        gray = sum(w * planes[:, c].astype(np.float32) for c, w in enumerate(_LUMA))
        saturation = saturation_plane(planes)
        od = _OD[planes]
        tissue = saturation >= tissue_saturation
        return cls(planes, gray, saturation, tissue, od, _stain(od, 0), _stain(od, 1))


def _centre_minus_border(a: np.ndarray) -> np.ndarray:
    """Mean over the centre 32x32 minus mean over the rest, for ``(N, 96, 96)``: (N,)."""
    total = a.sum(axis=(1, 2), dtype=np.float64)
    centre = a[(slice(None), *CENTRE)].sum(axis=(1, 2), dtype=np.float64)
    n_centre = CENTRE_PX * CENTRE_PX
    return centre / n_centre - (total - centre) / (PATCH_PX * PATCH_PX - n_centre)


def patch_features(maps: PixelMaps) -> np.ndarray:
    """The FEATURES of each patch of a block: float32 (N, F)."""
    n = len(maps.planes)
    rgb = maps.planes.reshape(n, 3, -1).astype(np.float32)  # (N, 3, 9216)
    mean = rgb.mean(axis=2)
    rgb -= mean[..., None]
    std = np.sqrt(np.einsum("ncp,ncp->nc", rgb, rgb) / rgb.shape[2])
    columns = [
        *mean.T,
        *std.T,
        maps.gray.mean(axis=(1, 2)),
        maps.saturation.mean(axis=(1, 2)),
        maps.tissue.mean(axis=(1, 2)),
        maps.haem.mean(axis=(1, 2)),
        maps.eosin.mean(axis=(1, 2)),
        laplacian_variance(maps.gray),
        _centre_minus_border(maps.gray),
        _centre_minus_border(maps.saturation),
        _centre_minus_border(maps.tissue),
        _centre_minus_border(maps.haem),
        _centre_minus_border(maps.eosin),
    ]
    return np.stack(columns, axis=1).astype(np.float32)


def perceptual_hash(gray: np.ndarray) -> np.ndarray:
    """64-bit pHash of ``(N, 96, 96)`` grey images (as in the imagehash package): (N,) uint64.

    The image is shrunk to 32x32 by 3x3 block means, transformed by a 2-D DCT, and each of the
    8x8 lowest frequencies becomes one bit: above the median of those 64 or not.
    """
    from scipy.fft import dctn

    n = len(gray)
    small = gray.reshape(n, 32, 3, 32, 3).mean(axis=(2, 4))  # (N, 32, 32)
    low = dctn(small, axes=(1, 2), type=2)[:, :8, :8].reshape(n, 64)
    bits = low > np.median(low, axis=1, keepdims=True)  # (N, 64)
    return np.packbits(bits, axis=1, bitorder="little").view("<u8").ravel()


def grey_thumbnail(gray: np.ndarray) -> np.ndarray:
    """8x8 block means (12x12 px each) of ``(N, 96, 96)`` grey images: (N, 64) uint8."""
    n = len(gray)
    return np.rint(gray.reshape(n, 8, 12, 8, 12).mean(axis=(2, 4))).astype(np.uint8).reshape(n, 64)


def popcount(x: np.ndarray) -> np.ndarray:
    """Number of set bits of each uint64."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x).astype(np.int64)
    table = np.array([bin(i).count("1") for i in range(256)], dtype=np.int64)
    return table[x.view(np.uint8).reshape(-1, 8)].sum(axis=1)


@dataclass
class PixelStats:
    """Running per-class statistics: channel histograms (centre and border) and mean images."""

    hist: np.ndarray = field(
        default_factory=lambda: np.zeros(
            (len(GROUPS), len(REGIONS), len(HIST_RANGES), HIST_BINS), dtype=np.int64
        )
    )  # (group, region, channel, bin)
    image_sum: np.ndarray = field(
        default_factory=lambda: np.zeros((len(GROUPS), PATCH_PX, PATCH_PX, 3), dtype=np.float64)
    )
    count: np.ndarray = field(default_factory=lambda: np.zeros(len(GROUPS), dtype=np.int64))

    def add(self, maps: PixelMaps, groups: np.ndarray, stride: int = 4) -> None:
        """Add a block; ``groups`` (N,) indexes GROUPS. Histograms use every ``stride``-th pixel."""
        for g in np.unique(groups):
            members = groups == g
            # (n, 3, 96, 96) -> (96, 96, 3)
            self.image_sum[g] += (
                maps.planes[members].sum(axis=0, dtype=np.float64).transpose(1, 2, 0)
            )
            self.count[g] += int(members.sum())
        sub = (slice(None), slice(None, None, stride), slice(None, None, stride))
        planes = maps.planes[:, :, ::stride, ::stride]  # (N, 3, h, w)
        hue, saturation, value = hsv_planes(planes)
        scaled = [planes[:, c] // (256 // HIST_BINS) for c in range(3)]  # 256 levels -> bins
        floats = [
            hue,
            saturation,
            value,
            maps.haem[sub],
            maps.eosin[sub],
            _stain(maps.od[:, :, ::stride, ::stride], 2),
        ]
        for values, (lo, hi) in zip(floats, list(HIST_RANGES.values())[3:], strict=True):
            bins = ((values - lo) * (HIST_BINS / (hi - lo))).astype(np.int64)
            scaled.append(np.clip(bins, 0, HIST_BINS - 1, out=bins))
        border = np.ones((PATCH_PX, PATCH_PX), dtype=np.int64)
        border[CENTRE] = 0
        # each pixel's run of bins: (group, region) -> channels x bins
        offset = (groups[:, None, None] * len(REGIONS) + border[None][sub]) * len(HIST_RANGES)
        size = self.hist.size
        for k, bins in enumerate(scaled):
            index = (offset + k) * HIST_BINS + bins
            self.hist += np.bincount(index.ravel(), minlength=size).reshape(self.hist.shape)

    def mean_images(self) -> np.ndarray:
        """(G, 96, 96, 3) float mean image per group (NaN for an empty group)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.image_sum / self.count[:, None, None, None]


def hamming_pairs(
    hashes: np.ndarray, max_bits: int, max_step: int = 4_000_000
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of positions ``(i, j)``, i < j, whose 64-bit hashes differ in at most ``max_bits``.

    The bits are cut into ``max_bits + 1`` bands; two hashes that close agree on at least one
    band (pigeonhole), so only hashes sharing a band value are compared: sort by the band, pair
    within equal runs, keep those truly within ``max_bits``. Candidate pairs are made at most
    ``max_step`` at a time. Returns ((P, 2) int64 pairs, (P,) distances).
    """
    n = len(hashes)
    if n < 2 or max_bits < 0:
        return np.zeros((0, 2), dtype=np.int64), np.zeros(0, dtype=np.int64)
    edges = np.linspace(0, 64, max_bits + 2).astype(int)
    found = []
    for lo, hi in itertools.pairwise(edges):
        key = (hashes >> np.uint64(lo)) & np.uint64((1 << int(hi - lo)) - 1)
        order = np.argsort(key, kind="stable")
        sorted_key = key[order]
        starts = np.flatnonzero(np.r_[True, sorted_key[1:] != sorted_key[:-1]])
        sizes = np.diff(np.r_[starts, n])
        partners = np.repeat(starts + sizes, sizes) - np.arange(n) - 1  # later ones in the run
        cum = np.cumsum(partners)
        cuts = np.searchsorted(cum, np.arange(max_step, cum[-1], max_step))
        bounds = np.unique(np.r_[0, cuts + 1, n])
        for a, b in itertools.pairwise(bounds):
            count = partners[a:b]
            left = np.repeat(np.arange(a, b), count)
            run_start = np.repeat(np.cumsum(count) - count, count)
            right = left + 1 + np.arange(len(left)) - run_start
            i, j = order[left], order[right]
            near = popcount(hashes[i] ^ hashes[j]) <= max_bits
            found.append(np.stack([np.minimum(i, j)[near], np.maximum(i, j)[near]], axis=1))
    pairs = np.unique(np.concatenate(found), axis=0)
    return pairs, popcount(hashes[pairs[:, 0]] ^ hashes[pairs[:, 1]])


def exact_duplicates(digest: np.ndarray, readable: np.ndarray) -> list[np.ndarray]:
    """Groups (ascending indices, 2 or more) of ``readable`` patches with the same SHA-1 digest."""
    ok = np.flatnonzero(readable)
    keys = np.ascontiguousarray(digest[ok]).view("V20").ravel()  # (n,) 20-byte keys
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    members = np.split(ok[np.argsort(inverse, kind="stable")], np.cumsum(counts)[:-1])
    return [g for g in members if len(g) > 1]


def near_duplicates(
    phash: np.ndarray, thumbs: np.ndarray, candidates: np.ndarray, max_bits: int, max_grey: float
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Near-duplicate pairs and groups among the ``candidates`` (N,) bool.

    A pair needs both its pHashes within ``max_bits`` and its 8x8 grey thumbnails within
    ``max_grey`` levels in every cell: pHash alone pairs up sparse patches whose little tissue
    sits in the same corner. Returns ((P, 2) pairs, (P,) bit distances, groups of indices).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    nodes = np.flatnonzero(candidates)
    pairs, bits = hamming_pairs(phash[nodes], max_bits)
    pairs = nodes[pairs]
    grey = np.abs(thumbs[pairs[:, 0]].astype(np.int16) - thumbs[pairs[:, 1]]).max(axis=1)
    pairs, bits = pairs[grey <= max_grey], bits[grey <= max_grey]
    if not len(pairs):
        return pairs, bits, []
    n = len(phash)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    linked = np.unique(pairs)
    order = linked[np.argsort(comp[linked], kind="stable")]
    groups = np.split(order, np.flatnonzero(np.diff(comp[order])) + 1)
    return pairs, bits, [np.sort(g) for g in groups]


def colour_scores(x: np.ndarray, k: int) -> np.ndarray:
    """Distance to the k-th nearest neighbour in median/MAD-scaled space, over its median.

    A neighbour distance rather than one robust ellipse (MinCovDet): stain colour here has
    several modes (labs, scanners), and one ellipse marks a whole mode as outlying. Beyond
    50,000 patches the neighbours are looked up among a fixed random 50,000.
    """
    from sklearn.neighbors import NearestNeighbors

    if len(x) < 3:
        return np.zeros(len(x))
    med = np.median(x, axis=0)
    mad = 1.4826 * np.median(np.abs(x - med), axis=0)
    scale = np.where(mad > 0, mad, np.maximum(x.std(axis=0), 1e-9))
    z = (x - med) / scale
    ref = np.random.default_rng(0).permutation(len(z))[:50_000]
    k = min(k, len(ref) - 1)
    nn = NearestNeighbors(n_neighbors=k + 1).fit(z[ref])
    dist, _ = nn.kneighbors(z)
    in_ref = np.zeros(len(z), dtype=bool)
    in_ref[ref] = True
    # a reference point finds itself first: skip it; others take the k-th
    kth = np.where(in_ref, dist[:, k], dist[:, k - 1])
    median = np.median(kth)
    return kth / median if median > 0 else np.where(kth > 0, np.inf, 0)
