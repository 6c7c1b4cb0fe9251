"""The data audit: one streaming pass over a source, then outliers, duplicates, cleaning, baseline.

``run_audit`` writes three files into a new folder: ``audit.html`` (one self-contained page),
``audit.json`` (every number in it) and ``clean_manifest.csv`` (``id,label,keep,reason``, which
``histoscan prepare/train --manifest`` accept). The folder is built beside the target under a
hidden name and renamed at the end, so a failed audit leaves nothing that looks finished.

Memory is bounded: the pass keeps one feature row, one perceptual hash and one SHA-1 per patch
plus running sums; the few patches shown as thumbnails are read again at the end.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from histoscan.audit import features as af
from histoscan.audit.stats import baseline_auc, can_fit, feature_table
from histoscan.data.sources import PATCH_PX, PatchSource, open_source
from histoscan.errors import DataError
from histoscan.progress import progress_bar

log = logging.getLogger(__name__)
SUB_BLOCK = 256  # float per-pixel maps take ~500 bytes a pixel: keep them to ~120 MB


@dataclass(frozen=True)
class AuditConfig:
    """Thresholds of the cleaning rules (each can be switched off) and the audit's settings."""

    tissue_saturation: float = 0.07  # a pixel is tissue if its HSV saturation is at least this
    min_tissue: float = 0.02  # background-only below this tissue fraction (0 = off)
    black_max: float = 35.0  # near-black below this mean brightness, 0-255 (0 = off)
    white_min: float = 245.0  # near-white above this mean brightness (255 = off)
    blur_max: float = 100.0  # blurred below this variance of the Laplacian (0 = off)
    colour_max: float = 6.0  # colour outlier above this neighbour-distance ratio (0 = off)
    colour_k: int = 10  # neighbours for the colour-outlier distance
    near_dup_bits: int = 4  # near-duplicate at this pHash Hamming distance or less (-1 = off)
    near_dup_grey: float = 16.0  # ... and 8x8 grey thumbnails within this many levels
    chunk: int = 1024  # patches decoded per block
    worst: int = 12  # thumbnails per outlier grid
    samples: int = 8  # thumbnails per class in the sample grids
    folds: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        if not -1 <= self.near_dup_bits <= 12:
            raise DataError("--near-dup-bits must be between -1 (off) and 12")
        if self.chunk < 1 or self.colour_k < 1 or self.folds < 2:
            raise DataError("chunk and colour_k must be positive, folds at least 2")

    def rules(self) -> dict[str, str]:
        """Cleaning rule -> what it removes, with this config's threshold."""
        return {
            "unreadable": "cannot be decoded as a 96x96 RGB uint8 patch",
            "near_black": f"mean brightness < {self.black_max:g} (of 255)",
            "near_white": f"mean brightness > {self.white_min:g} (of 255)",
            "background": f"tissue fraction < {self.min_tissue:g} (tissue: saturation >= "
            f"{self.tissue_saturation:g})",
            "blurred": f"variance of the Laplacian < {self.blur_max:g}",
            "colour_outlier": f"colour distance to its {self.colour_k}th neighbour > "
            f"{self.colour_max:g} x the median such distance",
            "exact_duplicate": "same pixels as an earlier patch (the first copy is kept)",
            "label_conflict": "same pixels as another patch with the other label (all dropped)",
            "near_duplicate": f"pHash within {self.near_dup_bits} bits and 8x8 grey thumbnail "
            f"within {self.near_dup_grey:g} levels of an earlier kept patch",
        }


# rules whose hits are marked "review" in the manifest, not removed: the colour rule also catches
# ordinary dense lymphoid tissue, so a person should look before such a patch is dropped
REVIEW_RULES = ("colour_outlier",)

# rule -> (feature it thresholds, True if low values are bad); the worst cases sort on it
RULE_SCORES = {
    "near_black": ("brightness", True),
    "near_white": ("brightness", False),
    "background": ("tissue_fraction", True),
    "blurred": ("sharpness", True),
    "colour_outlier": ("colour_score", False),
}


@dataclass
class Scan:
    """What the streaming pass keeps: one row per patch, running sums, and the failures."""

    features: np.ndarray  # (N, F) float32, NaN where unreadable
    phash: np.ndarray  # (N,) uint64
    thumbs: np.ndarray  # (N, 64) uint8 8x8 grey thumbnails, to confirm near-duplicates
    digest: np.ndarray  # (N, 20) uint8 SHA-1 of the raw pixels
    readable: np.ndarray  # (N,) bool
    unreadable: list[tuple[int, str]]  # (index, reason)
    stats: af.PixelStats
    seconds: dict[str, float] = field(default_factory=dict)

    def feature(self, name: str) -> np.ndarray:
        return self.features[:, list(af.FEATURES).index(name)]


class ConcatSource(PatchSource):
    """Several splits audited together (e.g. Kaggle train + test), in the given order."""

    def __init__(self, parts: dict[str, PatchSource]) -> None:
        sources = list(parts.values())
        ids = [key for s in sources for key in s.ids]
        super().__init__(sources[0].root, ids, np.concatenate([s.labels for s in sources]))
        self.parts = sources
        self.offsets = np.cumsum([0] + [len(s) for s in sources])
        self.split_names = np.repeat(list(parts), [len(s) for s in sources])
        self.kind = " + ".join(s.kind for s in sources)
        self.id_is_hash = all(s.id_is_hash for s in sources)
        self.problems = [p for s in sources for p in s.problems]

    def _part(self, i: int) -> tuple[PatchSource, int]:
        k = int(np.searchsorted(self.offsets, i, side="right")) - 1
        return self.parts[k], i - int(self.offsets[k])

    def locate(self, i: int) -> str:
        source, j = self._part(i)
        return source.locate(j)

    def read(self, i: int) -> np.ndarray:
        source, j = self._part(i)
        return source.read(j)

    def read_many(self, indices: Sequence[int]) -> np.ndarray:
        indices = np.asarray(indices, dtype=np.int64)
        out = np.empty((len(indices), PATCH_PX, PATCH_PX, 3), dtype=np.uint8)
        part = np.searchsorted(self.offsets, indices, side="right") - 1
        for k in np.unique(part):
            out[part == k] = self.parts[k].read_many(indices[part == k] - self.offsets[k])
        return out


def open_audit_source(path: Path, labels: Path | None, split: str | None) -> PatchSource:
    """``open_source``, where ``split`` may name several splits: ``train,test``."""
    names = [s.strip() for s in (split or "").split(",") if s.strip()]
    if len(names) <= 1:
        return open_source(path, labels=labels, split=names[0] if names else None)
    return ConcatSource({name: open_source(path, labels=labels, split=name) for name in names})


def split_names(source: PatchSource) -> np.ndarray:
    """The split of each patch: from a ConcatSource, else the source's kind for all."""
    names = getattr(source, "split_names", None)
    return names if names is not None else np.repeat([source.kind], len(source))


def _read_block(
    source: PatchSource, idx: np.ndarray, failed: list
) -> tuple[np.ndarray, np.ndarray]:
    """Decode a block; on a bad item fall back to one by one. Returns (images, readable mask)."""
    try:
        return source.read_many(idx), np.ones(len(idx), dtype=bool)
    except DataError:
        pass
    images = np.zeros((len(idx), PATCH_PX, PATCH_PX, 3), dtype=np.uint8)
    ok = np.zeros(len(idx), dtype=bool)
    for j, i in enumerate(idx):
        try:
            images[j] = source.read(int(i))
            ok[j] = True
        except DataError as exc:
            reason = str(exc).removeprefix(f"{source.locate(int(i))}: ")
            failed.append((int(i), reason))
    return images[ok], ok


def scan_source(source: PatchSource, cfg: AuditConfig, progress: bool = True) -> Scan:
    """The one pass over every patch: features, hashes and running per-class pixel statistics."""
    n = len(source)
    scan = Scan(
        features=np.full((n, len(af.FEATURES)), np.nan, dtype=np.float32),
        phash=np.zeros(n, dtype=np.uint64),
        thumbs=np.zeros((n, 64), dtype=np.uint8),
        digest=np.zeros((n, 20), dtype=np.uint8),
        readable=np.zeros(n, dtype=bool),
        unreadable=[],
        stats=af.PixelStats(),
        seconds={"read": 0.0, "features": 0.0, "hashes": 0.0},
    )
    groups = group_index(source.labels)
    with progress_bar("audit", total=n, show=progress, unit="patches") as bar:
        for start in range(0, n, cfg.chunk):
            t0 = time.perf_counter()
            idx = np.arange(start, min(n, start + cfg.chunk))
            block, ok = _read_block(source, idx, scan.unreadable)
            idx = idx[ok]
            scan.readable[idx] = True
            bar.advance(len(ok))
            scan.seconds["read"] += time.perf_counter() - t0
            _scan_block(scan, block, idx, groups[idx], cfg.tissue_saturation)
    return scan


def _scan_block(
    scan: Scan, block: np.ndarray, idx: np.ndarray, groups: np.ndarray, tissue_saturation: float
) -> None:
    """Features, running sums and hashes of one decoded block (patches ``idx`` of the source)."""
    for lo in range(0, len(idx), SUB_BLOCK):  # float per-pixel maps of a few patches at a time
        t0 = time.perf_counter()
        part, sub = idx[lo : lo + SUB_BLOCK], slice(lo, lo + SUB_BLOCK)
        maps = af.PixelMaps.of(block[sub], tissue_saturation)
        scan.features[part] = af.patch_features(maps)
        scan.stats.add(maps, groups[sub])
        t1 = time.perf_counter()
        scan.phash[part] = af.perceptual_hash(maps.gray)
        scan.thumbs[part] = af.grey_thumbnail(maps.gray)
        for i, image in zip(part, block[sub], strict=True):
            scan.digest[i] = np.frombuffer(hashlib.sha1(image.tobytes()).digest(), np.uint8)
        scan.seconds["features"] += t1 - t0
        scan.seconds["hashes"] += time.perf_counter() - t1


def group_index(labels: np.ndarray) -> np.ndarray:
    """Index into GROUPS: 0 negative, 1 positive, 2 unlabelled."""
    return np.where(labels < 0, 2, labels).astype(np.int64)


def flag_patches(scan: Scan, cfg: AuditConfig) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per-patch rule hits (each (N,) bool) and the colour scores (N,), NaN where not scored.

    Blur and colour are judged only on patches with tissue (not near-black, near-white or
    background): a blank patch is trivially "blurred" and would crowd out the real cases.
    """
    ok = scan.readable
    brightness, tissue = scan.feature("brightness"), scan.feature("tissue_fraction")
    with np.errstate(invalid="ignore"):
        flags = {
            "unreadable": ~ok,
            "near_black": ok & (brightness < cfg.black_max),
            "near_white": ok & (brightness > cfg.white_min),
            "background": ok & (tissue < cfg.min_tissue),
        }
        tissue_ok = ok & ~(flags["near_black"] | flags["near_white"] | flags["background"])
        colour = np.full(len(ok), np.nan)
        cols = [list(af.FEATURES).index(name) for name in af.COLOUR_FEATURES]
        x = scan.features[tissue_ok][:, cols].astype(np.float64)
        colour[tissue_ok] = af.colour_scores(x, cfg.colour_k)
        flags["blurred"] = tissue_ok & (scan.feature("sharpness") < cfg.blur_max)
        flags["colour_outlier"] = tissue_ok & (cfg.colour_max > 0) & (colour > cfg.colour_max)
    return flags, colour


@dataclass
class Duplicates:
    exact_groups: list[np.ndarray]  # indices with the same pixels, ascending; 2 or more each
    near_pairs: np.ndarray  # (P, 2) near-duplicate pairs (first copies of exact groups)
    near_bits: np.ndarray  # (P,) their pHash Hamming distances
    near_groups: list[np.ndarray]  # connected near-duplicate groups


def find_duplicates(scan: Scan, flags: dict[str, np.ndarray], cfg: AuditConfig) -> Duplicates:
    """Exact duplicates among readable patches; near ones among the first copies with tissue."""
    exact = af.exact_duplicates(scan.digest, scan.readable)
    first = np.ones(len(scan.readable), dtype=bool)
    for group in exact:
        first[group[1:]] = False
    blank = flags["near_black"] | flags["near_white"] | flags["background"]
    candidates = scan.readable & first & ~blank  # blank patches hash to noise
    near = af.near_duplicates(
        scan.phash, scan.thumbs, candidates, cfg.near_dup_bits, cfg.near_dup_grey
    )
    return Duplicates(exact, *near)


def apply_rules(
    flags: dict[str, np.ndarray], dups: Duplicates, labels: np.ndarray
) -> dict[str, np.ndarray]:
    """Add the duplicate rules to ``flags``: keep the first (otherwise clean) member of a group."""
    n = len(labels)
    bad = np.any(list(flags.values()), axis=0)
    flags = {**flags, **{r: np.zeros(n, bool) for r in ("exact_duplicate", "label_conflict")}}
    flags["near_duplicate"] = np.zeros(n, bool)
    for group in dups.exact_groups:
        keeper = _keeper(group, bad)
        flags["exact_duplicate"][group[group != keeper]] = True
        if {0, 1} <= set(labels[group].tolist()):
            flags["label_conflict"][group] = True
    members = {g[0]: g for g in dups.exact_groups}  # leader -> its exact copies
    for group in dups.near_groups:
        keeper = _keeper(group, bad)
        for node in group[group != keeper]:
            flags["near_duplicate"][members.get(node, [node])] = True
    return flags


def _keeper(group: np.ndarray, bad: np.ndarray) -> int:
    """The first member that no per-patch rule removes (else the first)."""
    return int(next((i for i in group if not bad[i]), group[0]))


@dataclass
class Audit:
    """Everything the audit found; ``audit_report`` turns it into JSON and HTML."""

    source: PatchSource
    cfg: AuditConfig
    scan: Scan
    flags: dict[str, np.ndarray]  # rule -> (N,) bool
    colour: np.ndarray  # (N,) colour-outlier score
    dups: Duplicates
    features: list[dict] | None = None  # feature_table, None without both classes
    baseline: dict = field(default_factory=dict)  # "all" / "kept" -> baseline_auc result
    probs: np.ndarray | None = None  # out-of-fold probabilities for "all"
    seconds: dict[str, float] = field(default_factory=dict)
    command: str | None = None

    @cached_property
    def keep(self) -> np.ndarray:
        """(N,) bool: hit by no removing rule (a review rule alone does not remove a patch)."""
        removing = [hit for rule, hit in self.flags.items() if rule not in REVIEW_RULES]
        return ~np.any(removing, axis=0)

    @cached_property
    def review(self) -> np.ndarray:
        """(N,) bool: kept, but hit by a review rule: a person should look at it."""
        flagged = [hit for rule, hit in self.flags.items() if rule in REVIEW_RULES]
        return self.keep & np.any(flagged, axis=0) if flagged else np.zeros_like(self.keep)

    def reasons(self, i: int) -> str:
        return ";".join(rule for rule, hit in self.flags.items() if hit[i])


def audit_source(source: PatchSource, cfg: AuditConfig, progress: bool = True) -> Audit:
    """Scan, flag, find duplicates, apply the rules and fit the baseline; writes nothing."""
    if len(source) == 0:
        raise DataError(f"{source.root}: no patches found")
    scan = scan_source(source, cfg, progress)
    if not scan.readable.any():
        i, reason = scan.unreadable[0]
        raise DataError(f"{source.locate(i)}: {reason} (and every other patch too)")
    seconds = dict(scan.seconds)
    t0 = time.perf_counter()
    flags, colour = flag_patches(scan, cfg)
    t1 = time.perf_counter()
    dups = find_duplicates(scan, flags, cfg)
    flags = apply_rules(flags, dups, source.labels)
    t2 = time.perf_counter()
    audit = Audit(source, cfg, scan, flags, colour, dups)
    labelled = scan.readable & (source.labels >= 0)
    y = source.labels[labelled].astype(np.int64)
    if can_fit(y, cfg.folds) is None:
        audit.features = feature_table(scan.features[labelled], y)
        audit.baseline["all"], audit.probs = baseline_auc(
            scan.features[labelled], y, cfg.folds, cfg.seed
        )
        kept = labelled & audit.keep
        y_kept = source.labels[kept].astype(np.int64)
        if can_fit(y_kept, cfg.folds) is None:
            audit.baseline["kept"], _ = baseline_auc(
                scan.features[kept], y_kept, cfg.folds, cfg.seed
            )
    seconds |= {"outliers": t1 - t0, "duplicates": t2 - t1, "baseline": time.perf_counter() - t2}
    audit.seconds = seconds
    return audit
