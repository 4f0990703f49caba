"""Network dissection maths (Bau, Zhou, Khosla, Oliva, Torralba, "Network Dissection", CVPR 2017).

Reference code: CSAILVision/NetDissect (``src/labelprobe.py``, ``src/makeresult.py``) and NetDissect-Lite
(``feature_operation.py``). The protocol (docs/protocols.md, "Network dissection"):

- threshold of unit ``k``: ``T_k``, the ``1 - quantile`` quantile (linear interpolation, ``numpy.percentile``'s
  default, as NetDissect-Lite's ``quantile_threshold``) of the unit's activations over all probe images and all
  positions, *before* upsampling; computed exactly from a running top-k (:class:`StreamingTopK`);
- the unit's mask on an image: its activation map upsampled bilinearly (``align_corners=False``) to the label
  resolution, ``A_k > T_k``;
- ``IoU(k, c) = sum_x |M_k(x) & L_c(x)| / sum_x |M_k(x) | L_c(x)|`` over the whole probe, where the unit's pixels
  count in the union only on images that carry some label of ``c``'s category (NetDissect ``makeresult.py``,
  ``count_act_with_labelcat``); an image-level label (scene, texture) is a mask covering the whole image;
- label of a unit: arg-max IoU over concepts, ties to the lowest category index, then the lowest label index; the
  unit is a detector when that IoU exceeds ``iou_threshold`` (0.04).

Concepts are numbered in one flat index (:class:`ConceptSet`): the categories in order, and within a category its
labels ``1..n`` (label 0, ``"-"``, is "no concept" and has no flat index). So "lowest category, then lowest label"
is simply "lowest flat index".

The tally is the product of the unit masks (units x pixels) and the one-hot labels (pixels x concepts), summed
over images, evaluated in two steps. Pixels with the same labels form a few *regions* per image
(:class:`ProbeLabels`); each mask's pixels are counted per region (:func:`count_mask_pixels`), and those counts
times the regions' one-hot concepts give the intersections. Only the pixels that can be in a mask are computed:
bilinear upsampling makes every pixel a convex combination of (at most) four low-resolution values, the same four
for a whole *tile* of pixels, so a tile whose four values do not exceed ``T_k`` (in particular every tile of an
(image, unit) pair whose peak does not; the reference code skips those pairs the same way) has no pixel in the
mask. At NetDissect's 0.005 quantile about one tile in ten is computed. Masks are decided in float64 and counts
are exact integers, on the activations' device; nothing loops over images, units or pixels in Python.
:func:`tally_reference_numpy` is the straightforward per-image loop of the reference code, kept as the oracle of
the tests and the baseline of ``benchmarks/dissection.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from interpbench.core.base import ComponentError

# --------------------------------------------------------------------------------------------- concepts


@dataclasses.dataclass(frozen=True)
class ConceptSet:
    """The probe's concepts: categories in order, each with its label names (index 0 is ``"-"``, no concept).

    Flat concept ``j`` is label ``code`` of category ``k`` with ``j = offsets[k] + code - 1``.
    """

    categories: tuple[str, ...]
    labels: tuple[tuple[str, ...], ...]  # per category, the names of codes 0..n (code 0 = "-")

    @classmethod
    def from_names(cls, names: Mapping[str, Sequence[str]]) -> "ConceptSet":
        """From ``{category: ["-", name1, name2, ...]}`` (a dataset's ``concept_names()``)."""
        if not names:
            raise ComponentError("dissection: the probe has no concept categories; concept_names() returned nothing")
        categories, labels = [], []
        for category, values in names.items():
            values = [str(v) for v in values]
            if not values:
                raise ComponentError(
                    f"dissection: category {category!r} has no labels; concept_names()[{category!r}] must list "
                    "'-' (no concept) at index 0 and then the concept names"
                )
            categories.append(str(category))
            labels.append(tuple(values))
        return cls(tuple(categories), tuple(labels))

    @property
    def num_categories(self) -> int:
        return len(self.categories)

    @property
    def sizes(self) -> tuple[int, ...]:
        """Number of concepts (labels other than 0) per category."""
        return tuple(len(names) - 1 for names in self.labels)

    @property
    def offsets(self) -> tuple[int, ...]:
        """Flat index of label 1 of each category."""
        out, start = [], 0
        for n in self.sizes:
            out.append(start)
            start += n
        return tuple(out)

    @property
    def num_concepts(self) -> int:
        return sum(self.sizes)

    @property
    def names(self) -> list[str]:
        """Flat concept names."""
        return [name for names in self.labels for name in names[1:]]

    def category_of(self, device: torch.device | str | None = None) -> torch.Tensor:
        """LongTensor[C]: the category index of each flat concept."""
        return torch.repeat_interleave(torch.arange(self.num_categories), torch.tensor(self.sizes, dtype=torch.long)).to(device)

    def flat(self, category: str, label: str | int) -> int:
        """Flat index of ``label`` (a name or a code >= 1) of ``category``."""
        k = self.category_index(category)
        code = self.labels[k].index(label) if isinstance(label, str) and label in self.labels[k] else label
        if not isinstance(code, int) or not 1 <= code < len(self.labels[k]):
            raise ComponentError(f"dissection: category {category!r} has no label {label!r}; labels: {list(self.labels[k][1:])}")
        return self.offsets[k] + code - 1

    def category_index(self, category: str) -> int:
        if category not in self.categories:
            raise ComponentError(f"dissection: unknown concept category {category!r}; the probe has {list(self.categories)}")
        return self.categories.index(category)

    def describe(self, j: int) -> tuple[str, str]:
        """``(category, name)`` of flat concept ``j``; ``("-", "-")`` for ``j < 0`` (no label)."""
        if j < 0:
            return ("-", "-")
        k = int(np.searchsorted(np.asarray(self.offsets), j, side="right")) - 1
        return self.categories[k], self.labels[k][j - self.offsets[k] + 1]

    def code_table(self, k: int) -> torch.Tensor:
        """LongTensor mapping label code ``0..n`` of category ``k`` to its flat index (code 0 to -1)."""
        table = torch.arange(-1, self.sizes[k], dtype=torch.long) + self.offsets[k]
        table[0] = -1
        return table


# --------------------------------------------------------------------------------------------- thresholds


def quantile_position(n: int, quantile: float) -> tuple[int, int, float]:
    """For the ``1 - quantile`` quantile of ``n`` values: ``(k, lo, frac)``.

    numpy's linear interpolation: with values sorted ascending ``x_0..x_{n-1}``, position ``h = (1 - q)(n - 1)``,
    ``lo = floor(h)``, result ``x_lo + (h - lo)(x_{lo+1} - x_lo)``. Only the top ``k = n - lo`` values are needed.
    """
    if not 0.0 < quantile < 1.0:
        raise ComponentError(f"dissection: quantile {quantile!r} must lie strictly between 0 and 1 (default 0.005)")
    if n < 1:
        raise ComponentError("dissection: no activations to threshold (the probe is empty)")
    h = (1.0 - quantile) * (n - 1)
    lo = math.floor(h)
    return n - lo, lo, h - lo


def threshold_from_top(top: torch.Tensor, n: int, quantile: float) -> torch.Tensor:
    """``T_k`` (float64, per row) from each row's top values sorted descending (at least ``k`` of them).

    Bau et al. 2017 section 3.1: ``T_k`` such that ``P(a_k > T_k) = quantile``, here numpy's linear interpolation.
    """
    k, lo, frac = quantile_position(n, quantile)
    if top.shape[1] < k:
        raise ComponentError(f"dissection: need the top {k} activations per unit for the quantile, got {top.shape[1]}")
    top = top.to(exact_float(top.device))
    x_lo = top[:, k - 1]  # ascending index lo == descending index n - 1 - lo == k - 1
    x_hi = top[:, k - 2] if k >= 2 else x_lo
    return x_lo + frac * (x_hi - x_lo)


class StreamingTopK:
    """The exact ``k`` largest values of each row of a stream of ``rows x m`` blocks (optionally with indices).

    Memory stays at most ``rows x (2k + m)``: blocks are buffered and merged with ``torch.topk`` whenever the
    buffer holds ``k`` columns or more.
    """

    def __init__(self, k: int, rows: int, device: torch.device | str | None = None, dtype=torch.float32,
                 with_indices: bool = False) -> None:
        if k < 1:
            raise ComponentError(f"StreamingTopK: k must be >= 1, got {k}")
        self.k, self.rows, self.with_indices = int(k), int(rows), with_indices
        self.values = torch.empty(rows, 0, device=device, dtype=dtype)
        self.indices = torch.empty(rows, 0, device=device, dtype=torch.long) if with_indices else None
        self._buffer: list[torch.Tensor] = []
        self._buffer_indices: list[torch.Tensor] = []
        self._buffered = 0
        self.seen = 0

    def update(self, block: torch.Tensor, indices: torch.Tensor | None = None) -> None:
        """Add a ``rows x m`` block; ``indices`` (``m`` or ``rows x m``) label its columns when tracking indices."""
        if block.dim() != 2 or block.shape[0] != self.rows:
            raise ComponentError(f"StreamingTopK: expected a block of {self.rows} rows, got shape {tuple(block.shape)}")
        if torch.isnan(block).any():
            raise ComponentError("dissection: activations contain NaN; the model produced non-finite outputs on the probe")
        self._buffer.append(block.to(self.values.dtype))
        if self.with_indices:
            if indices is None:
                raise ComponentError("StreamingTopK: indices are required when with_indices=True")
            self._buffer_indices.append(indices.to(self.values.device).expand(self.rows, -1))
        self._buffered += block.shape[1]
        self.seen += block.shape[1]
        if self._buffered >= self.k:
            self._merge()

    def _merge(self) -> None:
        if not self._buffer:
            return
        values = torch.cat([self.values, *self._buffer], dim=1)
        keep = min(self.k, values.shape[1])
        if self.with_indices:  # ties to the lowest index: the same top k whatever the order or split of the stream
            indices = torch.cat([self.indices, *self._buffer_indices], dim=1)
            self.values, self.indices = top_by_value_then_index(values, indices, keep)
        else:
            self.values = torch.topk(values, keep, dim=1, largest=True, sorted=False).values
        self._buffer, self._buffer_indices, self._buffered = [], [], 0

    def result(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(values, indices)`` sorted descending per row (with indices: ties to the lowest index); indices or None."""
        self._merge()
        if self.with_indices:
            return self.values, self.indices  # sorted by _merge
        values, _ = torch.sort(self.values, dim=1, descending=True)
        return values, None


def top_by_value_then_index(values: torch.Tensor, indices: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the ``k`` entries of largest value, ties to the lowest index, in that order: a total order, so the
    result does not depend on how the entries were split or ordered (e.g. over the ranks of a distributed run)."""
    by_index = torch.argsort(indices, dim=1, stable=True)
    values, indices = values.gather(1, by_index), indices.gather(1, by_index)
    order = torch.argsort(values, dim=1, descending=True, stable=True)[:, :k]
    return values.gather(1, order), indices.gather(1, order)


# --------------------------------------------------------------------------------------------- labels


@dataclasses.dataclass
class ProbeLabels:
    """Concept labels of a batch of probe images at the label resolution ``size = (H, W)``, in flat indices.

    Pixels with the same labels form a *region* of their image (a few per image: the label tuples present).

    - ``regions``: int32 ``B x (H*W)``, the region of each pixel within its image;
    - ``region_labels``: int32 ``B x R x D``, the pixel labels of each region (one per label layer, -1 none);
    - ``region_sizes``: int64 ``B x R``, pixels per region (0 for padding);
    - ``images``: int32 ``B x L``, image-level labels (-1 padding): they cover every pixel of the image;
    - ``presence``: bool ``B x K``, the image carries some label of category ``k``.
    """

    regions: torch.Tensor
    region_labels: torch.Tensor
    region_sizes: torch.Tensor
    images: torch.Tensor
    presence: torch.Tensor
    size: tuple[int, int]
    num_concepts: int

    def to(self, device: torch.device | str) -> "ProbeLabels":
        return ProbeLabels(self.regions.to(device), self.region_labels.to(device), self.region_sizes.to(device),
                           self.images.to(device), self.presence.to(device), self.size, self.num_concepts)

    def __len__(self) -> int:
        return self.regions.shape[0]

    def nbytes(self) -> int:
        return sum(t.element_size() * t.numel()
                   for t in (self.regions, self.region_labels, self.region_sizes, self.images, self.presence))

    def select(self, rows: torch.Tensor) -> "ProbeLabels":
        return ProbeLabels(self.regions[rows], self.region_labels[rows], self.region_sizes[rows], self.images[rows],
                           self.presence[rows], self.size, self.num_concepts)

    def region_onehot(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``B x R x C``: how often each region carries each concept (its pixel labels and its image's labels)."""
        batch, regions = self.region_sizes.shape
        out = torch.zeros(batch, regions, self.num_concepts + 1, dtype=dtype, device=self.regions.device)
        labels = self.region_labels.long()
        out.scatter_add_(2, torch.where(labels >= 0, labels, self.num_concepts), torch.ones_like(labels, dtype=dtype))
        images = self.images.long()
        image_hot = torch.zeros(batch, self.num_concepts + 1, dtype=dtype, device=self.regions.device)
        image_hot.scatter_add_(1, torch.where(images >= 0, images, self.num_concepts), torch.ones_like(images, dtype=dtype))
        return (out + image_hot.unsqueeze(1))[..., : self.num_concepts]

    def pixel_concepts(self) -> torch.Tensor:
        """Int32 ``B x D x (H*W)``: the pixel labels of each pixel per label layer (-1 none)."""
        index = self.regions.long().unsqueeze(1).expand(-1, self.region_labels.shape[2], -1)
        return self.region_labels.transpose(1, 2).gather(2, index)


def concat_labels(parts: Sequence[ProbeLabels]) -> ProbeLabels:
    """One :class:`ProbeLabels` from several batches (regions, label layers and image labels padded)."""
    if not parts:
        raise ComponentError("dissection: no labels to concatenate")
    size = parts[0].size
    if any(p.size != size for p in parts):
        raise ComponentError(f"dissection: label batches at different resolutions {sorted({p.size for p in parts})}")
    regions = max(p.region_labels.shape[1] for p in parts)
    depth = max(p.region_labels.shape[2] for p in parts)
    width = max(p.images.shape[1] for p in parts)

    def pad(t: torch.Tensor, shape: tuple[int, ...], value: int) -> torch.Tensor:
        out = torch.full((t.shape[0], *shape), value, dtype=t.dtype, device=t.device)
        out[tuple(slice(0, n) for n in t.shape)] = t
        return out

    return ProbeLabels(torch.cat([p.regions for p in parts]),
                       torch.cat([pad(p.region_labels, (regions, depth), -1) for p in parts]),
                       torch.cat([pad(p.region_sizes, (regions,), 0) for p in parts]),
                       torch.cat([pad(p.images, (width,), -1) for p in parts]),
                       torch.cat([p.presence for p in parts]), size, parts[0].num_concepts)


def resize_labels(codes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of ``D x H x W`` label codes (NetDissect ``scale_segmentation``, order 0)."""
    if tuple(codes.shape[-2:]) == tuple(size):
        return codes
    scaled = F.interpolate(codes[None].double(), size=size, mode="nearest-exact")[0]
    return scaled.round().long()


def _regions(layers: torch.Tensor, num_concepts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct label tuples of a ``D x P`` label stack (``R x D``) and each pixel's tuple index (``P``)."""
    depth = layers.shape[0]
    if (num_concepts + 1) ** depth < 2**62:  # one int64 key per pixel: a 1-d unique is much faster than dim=0
        radix = (num_concepts + 1) ** torch.arange(depth, dtype=torch.long)
        keys, inverse = torch.unique(((layers + 1) * radix.unsqueeze(1)).sum(dim=0), return_inverse=True)
        tuples = (keys.unsqueeze(1) // radix) % (num_concepts + 1) - 1
        return tuples, inverse
    return torch.unique(layers.T, dim=0, return_inverse=True)


def encode_concepts(concept_maps: Sequence[Mapping[str, Any]], concepts: ConceptSet, size: tuple[int, int],
                    device: torch.device | str | None = None) -> ProbeLabels:
    """:class:`ProbeLabels` from each sample's ``concepts`` dict (category -> codes of that category).

    Per category a sample holds an ``H x W`` or ``D x H x W`` integer map (pixel labels, 0 = none; resized to
    ``size`` by nearest neighbour), or a 0-d / 1-d tensor or list of codes (image-level labels). Categories the
    sample lacks carry no labels; categories that ``concept_names()`` does not list are ignored. Codes index
    ``concept_names()[category]``.
    """
    height, width = size
    pixels = height * width
    tables = [concepts.code_table(k) for k in range(concepts.num_categories)]
    category_of = concepts.category_of()
    per_sample = []
    for maps in concept_maps:
        layers, image_level = [], []
        for category, value in (maps or {}).items():
            if category not in concepts.categories:
                continue
            k = concepts.categories.index(category)
            codes = torch.as_tensor(value)
            if codes.is_floating_point() or codes.dtype == torch.bool:
                raise ComponentError(f"dissection: concepts[{category!r}] must hold integer label codes, got {codes.dtype}")
            codes = codes.long()
            if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) > concepts.sizes[k]):
                raise ComponentError(
                    f"dissection: concepts[{category!r}] holds codes in [{int(codes.min())}, {int(codes.max())}] but "
                    f"category {category!r} has labels 0..{concepts.sizes[k]} (concept_names()); fix the probe"
                )
            if codes.dim() <= 1:
                flat = tables[k].index_select(0, codes.reshape(-1))
                image_level.append(flat[flat >= 0])
            elif codes.dim() in (2, 3):
                codes = resize_labels(codes.reshape(-1, *codes.shape[-2:]), (height, width))
                layers.append(tables[k].index_select(0, codes.reshape(-1)).view(codes.shape[0], -1))
            else:
                raise ComponentError(
                    f"dissection: concepts[{category!r}] has shape {tuple(codes.shape)}; expected H x W or D x H x W "
                    "pixel labels, or a 1-d list of image-level labels"
                )
        stacked = torch.cat(layers) if layers else torch.full((1, pixels), -1, dtype=torch.long)
        tuples, inverse = _regions(stacked, concepts.num_concepts)
        image_labels = torch.cat(image_level) if image_level else torch.empty(0, dtype=torch.long)
        present = torch.zeros(concepts.num_categories, dtype=torch.bool)
        found = torch.cat([tuples.reshape(-1), image_labels])
        present[category_of.index_select(0, found[found >= 0])] = True
        per_sample.append((tuples, inverse, torch.bincount(inverse, minlength=len(tuples)), image_labels, present))
    batch = len(per_sample)
    n_regions = max((t.shape[0] for t, *_ in per_sample), default=1)
    depth = max((t.shape[1] for t, *_ in per_sample), default=1)
    n_images = max((len(i) for *_, i, _ in per_sample), default=0)
    regions = torch.zeros(batch, pixels, dtype=torch.int32)
    region_labels = torch.full((batch, n_regions, depth), -1, dtype=torch.int32)
    region_sizes = torch.zeros(batch, n_regions, dtype=torch.long)
    images = torch.full((batch, n_images), -1, dtype=torch.int32)
    presence = torch.zeros(batch, concepts.num_categories, dtype=torch.bool)
    for i, (tuples, inverse, sizes, image_labels, present) in enumerate(per_sample):
        regions[i] = inverse
        region_labels[i, : tuples.shape[0], : tuples.shape[1]] = tuples
        region_sizes[i, : len(sizes)] = sizes
        images[i, : len(image_labels)] = image_labels
        presence[i] = present
    return ProbeLabels(regions, region_labels, region_sizes, images, presence, (height, width),
                       concepts.num_concepts).to(device if device is not None else "cpu")


# --------------------------------------------------------------------------------------------- tally


@dataclasses.dataclass
class Tally:
    """Running counts of one layer over the probe (int64, on the device).

    ``intersection[k, c] = sum_x |M_k(x) & L_c(x)|``; ``activation[k, g] = sum of |M_k(x)|`` over images ``x``
    carrying a label of category ``g``; ``unit_pixels[k] = sum_x |M_k(x)|``; ``ground_truth[c] = sum_x |L_c(x)|``.
    """

    intersection: torch.Tensor
    activation: torch.Tensor
    unit_pixels: torch.Tensor
    ground_truth: torch.Tensor
    images: int = 0

    @classmethod
    def zeros(cls, units: int, concepts: ConceptSet, device: torch.device | str | None = None) -> "Tally":
        z = lambda *shape: torch.zeros(*shape, dtype=torch.long, device=device)  # noqa: E731
        return cls(z(units, concepts.num_concepts), z(units, concepts.num_categories), z(units), z(concepts.num_concepts))

    def to(self, device: torch.device | str) -> "Tally":
        return Tally(self.intersection.to(device), self.activation.to(device), self.unit_pixels.to(device),
                     self.ground_truth.to(device), self.images)

    def __add__(self, other: "Tally") -> "Tally":
        return Tally(self.intersection + other.intersection, self.activation + other.activation,
                     self.unit_pixels + other.unit_pixels, self.ground_truth + other.ground_truth,
                     self.images + other.images)


@functools.lru_cache(maxsize=32)
def _interpolation_matrix(n_in: int, n_out: int, device: str, dtype: torch.dtype) -> torch.Tensor:
    return torch.from_numpy(bilinear_matrix(n_in, n_out)).to(device, dtype)


def interpolation_matrix(n_in: int, n_out: int, device: torch.device | str | None = None,
                         dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``n_out x n_in`` matrix of 1-d linear interpolation with ``align_corners=False`` (torch's bilinear
    convention: source ``(i + 0.5) n_in / n_out - 0.5``, clamped at the borders). Cached; do not modify it."""
    device = str(torch.device(device) if device is not None else "cpu")
    return _interpolation_matrix(int(n_in), int(n_out), device, dtype)


def upsample_maps(maps: torch.Tensor, size: tuple[int, int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Bilinear upsampling (``align_corners=False``) of ``N x h x w`` maps to ``N x H x W`` in ``dtype``.

    Separable: ``R_h @ A @ R_w^T`` with the interpolation matrices (``F.interpolate(mode="bilinear")`` up to
    rounding, and faster on a CPU). The unit masks use float64, so that ``A_k > T_k`` is decided as the reference
    code's resize (double-precision weights and sums) decides it, not flipped by float32 rounding next to ``T_k``.
    """
    maps = maps.to(dtype)
    h, w = maps.shape[-2:]
    if (h, w) == tuple(size):
        return maps
    rows = interpolation_matrix(h, size[0], maps.device, dtype)
    cols = interpolation_matrix(w, size[1], maps.device, dtype)
    wide = (maps.reshape(-1, w) @ cols.T).reshape(*maps.shape[:-2], h, size[1])  # one GEMM over all rows
    return torch.matmul(rows, wide)


def exact_float(device: torch.device) -> torch.dtype:
    """float64, the precision of the masks and the count products; float32 on Apple's MPS, which has no float64
    (counts below 2**24 stay exact; masks may then differ from the reference next to ``T_k``)."""
    return torch.float32 if torch.device(device).type == "mps" else torch.float64


def ground_truth_counts(labels: ProbeLabels, num_concepts: int | None = None) -> torch.Tensor:
    """``|L_c|`` summed over the batch (int64 ``C``); an image-level label covers all ``H*W`` pixels."""
    wide = exact_float(labels.regions.device)
    onehot = labels.region_onehot(wide)
    return torch.einsum("br,brc->c", labels.region_sizes.to(wide), onehot).round().long()


def accumulate_tally(tally: Tally, activations: torch.Tensor, thresholds: torch.Tensor, labels: ProbeLabels,
                     *, max_elements: int | None = None) -> Tally:
    """Add a batch (``B x U x h x w`` activations and their :class:`ProbeLabels`) to ``tally`` in place.

    Each mask's pixels are counted per region of its image (``Z``: units x images x regions) from the tiles of
    its upsampled map that can exceed ``T_k`` (:func:`count_mask_pixels`); ``Z`` times the regions' one-hot
    concepts gives the intersections (Bau et al. 2017, the numerator of the IoU). The category-conditioned
    activations are the pixel counts times the images' category presence. ``max_elements`` bounds the pixels
    evaluated at once (default: by device, see :func:`count_mask_pixels`).
    """
    batch, units = activations.shape[:2]
    if len(labels) != batch:
        raise ComponentError(f"dissection: {batch} activation maps but labels for {len(labels)} images")
    counts = count_mask_pixels(activations, thresholds, labels, max_elements=max_elements)
    wide = exact_float(activations.device)
    n_regions = labels.region_sizes.shape[1]
    counts = counts.view(units, batch, n_regions).to(wide)  # exact integers (float64)
    pixels = counts.sum(dim=2)  # |M_k(x)|, units x images
    with full_precision_matmul():
        tally.unit_pixels += pixels.sum(dim=1).round().long()
        tally.activation += (pixels @ labels.presence.to(wide)).round().long()
        onehot = labels.region_onehot(wide).reshape(batch * n_regions, -1)
        tally.intersection += (counts.reshape(units, batch * n_regions) @ onehot).round().long()
    tally.ground_truth += ground_truth_counts(labels)
    tally.images += batch
    return tally


@contextlib.contextmanager
def full_precision_matmul() -> Iterator[None]:
    """float32 matrix products in full precision (no TF32 / bf16 inputs) while the context is open: the upsampled
    activations are compared with ``T_k`` and the counts must be exact."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


@dataclasses.dataclass(frozen=True)
class Bands:
    """The output positions of a 1-d bilinear resize (``align_corners=False``) grouped by their two source
    positions: band ``a`` holds the outputs ``index[a, :]`` (``valid`` marks the padding) and every one of them is
    ``w0 * A[src0[a]] + w1 * A[src1[a]]`` with its own weights (the nonzeros of its row of
    :func:`interpolation_matrix`). Bands are at most ``ceil(n_out / n_in)`` long."""

    index: torch.Tensor  # bands x width, int64 (0 on padding)
    valid: torch.Tensor  # bands x width, bool
    src0: torch.Tensor  # bands, int64
    src1: torch.Tensor  # bands, int64
    w0: torch.Tensor  # bands x width (0 on padding)
    w1: torch.Tensor  # bands x width (0 on padding)


@functools.lru_cache(maxsize=32)
def _bands(n_in: int, n_out: int, device: str, dtype: torch.dtype) -> Bands:
    matrix = bilinear_matrix(n_in, n_out)
    src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    first = np.minimum(np.floor(src).astype(int), n_in - 1)
    cap = max(1, -(-n_out // n_in))
    groups: list[list[int]] = []
    for i in range(n_out):
        if groups and first[groups[-1][0]] == first[i] and len(groups[-1]) < cap:
            groups[-1].append(i)
        else:
            groups.append([i])
    width = max(len(g) for g in groups)
    index = np.zeros((len(groups), width), np.int64)
    valid = np.zeros((len(groups), width), bool)
    w0 = np.zeros((len(groups), width))
    w1 = np.zeros((len(groups), width))
    src0 = np.array([first[g[0]] for g in groups], np.int64)
    src1 = np.minimum(src0 + 1, n_in - 1)
    for a, g in enumerate(groups):
        index[a, : len(g)], valid[a, : len(g)] = g, True
        w0[a, : len(g)] = matrix[g, src0[a]]
        if src1[a] != src0[a]:
            w1[a, : len(g)] = matrix[g, src1[a]]
    as_tensor = lambda x, dt=None: torch.from_numpy(x).to(device, dt)  # noqa: E731
    return Bands(as_tensor(index), as_tensor(valid), as_tensor(src0), as_tensor(src1), as_tensor(w0, dtype),
                 as_tensor(w1, dtype))


def bands(n_in: int, n_out: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float64) -> Bands:
    """The :class:`Bands` of a resize from ``n_in`` to ``n_out`` positions (cached; do not modify them)."""
    device = str(torch.device(device) if device is not None else "cpu")
    return _bands(int(n_in), int(n_out), device, dtype)


@functools.lru_cache(maxsize=32)
def _tile_pixels(h: int, height: int, w: int, width: int, device: str) -> torch.Tensor:
    """Flat pixel indices (``y * width + x``) of every tile, row ``a * column bands + b`` for row band ``a`` and
    column band ``b``; the padding of short bands points at ``height * width``. Cached; do not modify it."""
    rows, cols = bands(h, height, device), bands(w, width, device)
    pixel = rows.index[:, None, :, None] * width + cols.index[None, :, None, :]  # row bands x col bands x bh x bw
    valid = rows.valid[:, None, :, None] & cols.valid[None, :, None, :]
    pixel = torch.where(valid, pixel, torch.full_like(pixel, height * width))
    return pixel.reshape(rows.index.shape[0] * cols.index.shape[0], -1)


def count_mask_pixels(activations: torch.Tensor, thresholds: torch.Tensor, labels: ProbeLabels, *,
                      max_elements: int | None = None) -> torch.Tensor:
    """``|M_k(x) & region_r(x)|`` for every unit ``k``, image ``x`` and region ``r``: int64 ``(U*B) x R``, row
    ``k * B + x``, where ``M_k(x) = upsample(A_k(x)) > T_k`` at the labels' resolution.

    Exact and sparse. The upsampled map is cut into tiles, one per pair of row bands and column bands
    (:class:`Bands`): every pixel of a tile is a convex combination of the same four low-resolution values, so a
    tile whose four values do not exceed ``T_k`` has no pixel in the mask (the reference code skips whole maps by
    the same argument). Only the other tiles are computed, in the masks' precision (float64; :func:`exact_float`),
    with the weights of :func:`interpolation_matrix`, and their pixels above ``T_k`` are counted per region with
    ``index_add_``. At the 0.005 quantile a few tiles of a map qualify, so this evaluates a small share of the
    pixels that full-resolution masks would.
    """
    batch, units, h, w = activations.shape
    device = activations.device
    wide = exact_float(device)
    height, width = labels.size
    n_regions = labels.region_sizes.shape[1]
    rows, cols = bands(h, height, device, wide), bands(w, width, device, wide)
    maps = activations.detach().reshape(batch * units, h, w)
    t64 = thresholds.to(device, wide)
    peaks = maps.amax(dim=(1, 2)).to(wide)
    pair = torch.nonzero(peaks > t64.repeat(batch)).squeeze(1)  # pair = image * units + unit
    if pair.numel() == 0:
        return torch.zeros(units * batch, n_regions, dtype=torch.long, device=device)
    live = maps.index_select(0, pair).to(wide)
    t_pair = t64.index_select(0, pair % units)
    row_max = torch.maximum(live.index_select(1, rows.src0), live.index_select(1, rows.src1))  # pairs x bands x w
    block_max = torch.maximum(row_max.index_select(2, cols.src0), row_max.index_select(2, cols.src1))
    tiles = torch.nonzero(block_max > t_pair.view(-1, 1, 1))  # (pair, row band, column band)
    tile_pixels = _tile_pixels(h, height, w, width, str(device))  # tiles x pixels, padding -> H*W
    n_tiles = tile_pixels.shape[0]
    # int32 keys and counts when they fit (half the memory traffic of int64)
    small = torch.int32 if units * batch * (n_regions + 1) < 2**31 else torch.long
    # the region of every pixel of every tile of every image (padding: region R, a bin dropped at the end)
    regions = torch.cat([labels.regions.to(small), torch.full((batch, 1), n_regions, dtype=small, device=device)], 1)
    offsets = torch.arange(batch, device=device).unsqueeze(1) * regions.shape[1]
    tile_regions = regions.view(-1).index_select(0, (offsets + tile_pixels.view(1, -1)).view(-1)).view(batch * n_tiles, -1)
    row = ((pair % units * batch + pair // units) * (n_regions + 1)).to(small)  # the pair's first bin in ``out``
    out = torch.zeros(units * batch * (n_regions + 1), dtype=small, device=device)
    flat_maps = live.view(-1)
    if max_elements is None:  # CPU: temporaries that stay in the cache; GPU: few large launches
        max_elements = 1 << 16 if device.type == "cpu" else 1 << 24
    step = max(1, max_elements // tile_pixels.shape[1])
    for lo in range(0, tiles.shape[0], step):
        p, a, b = tiles[lo:lo + step].unbind(1)
        base = p * (h * w)
        r0, r1, c0, c1 = rows.src0[a] * w, rows.src1[a] * w, cols.src0[b], cols.src1[b]
        corner = lambda r, c: flat_maps.index_select(0, base + r + c).unsqueeze(1)  # noqa: E731
        w0, w1 = rows.w0.index_select(0, a), rows.w1.index_select(0, a)
        # along the rows first (the reference's rows @ feature @ cols.T), then along the columns
        left = torch.addcmul(w0 * corner(r0, c0), w1, corner(r1, c0)).unsqueeze(2)  # tiles x band height x 1
        right = torch.addcmul(w0 * corner(r0, c1), w1, corner(r1, c1)).unsqueeze(2)
        values = torch.addcmul(left * cols.w0.index_select(0, b).unsqueeze(1), right,
                               cols.w1.index_select(0, b).unsqueeze(1))
        inside = values.view(len(p), -1) > t_pair.index_select(0, p).unsqueeze(1)
        tile = pair.index_select(0, p) // units * n_tiles + a * cols.src0.numel() + b  # (image, tile)
        key = tile_regions.index_select(0, tile) + row.index_select(0, p).unsqueeze(1)
        out.index_add_(0, key.view(-1), inside.view(-1).to(small))
    return out.view(units * batch, n_regions + 1)[:, :n_regions].long()


# --------------------------------------------------------------------------------------------- scores


def iou_from_tally(tally: Tally, concepts: ConceptSet) -> torch.Tensor:
    """``U x C`` float64 IoU with the category-conditioned union (NetDissect ``makeresult.py``); 0 if empty."""
    category_of = concepts.category_of(tally.intersection.device)
    wide = exact_float(tally.intersection.device)
    intersection = tally.intersection.to(wide)
    union = tally.activation[:, category_of].to(wide) + tally.ground_truth.to(wide).unsqueeze(0) - intersection
    return torch.where(union > 0, intersection / union.clamp_min(1), torch.zeros_like(union))


@dataclasses.dataclass
class UnitLabels:
    """Labels of a layer's units: overall (``label``, ``score``, ``category``) and best per category.

    ``label`` is a flat concept index, -1 when the unit's IoU is 0 for every concept; ``category_label[k, g]`` is
    the best concept of category ``g`` (-1 when all of its IoUs are 0).
    """

    label: torch.Tensor
    score: torch.Tensor
    category: torch.Tensor
    category_label: torch.Tensor
    category_score: torch.Tensor

    def detectors(self, iou_threshold: float) -> torch.Tensor:
        return self.score > iou_threshold


def label_units(iou: torch.Tensor, concepts: ConceptSet) -> UnitLabels:
    """Arg-max IoU per unit, ties to the lowest category, then the lowest label (= the lowest flat index)."""
    units = iou.shape[0]
    score, label = iou.max(dim=1)  # torch.max returns the first maximal index
    label = torch.where(score > 0, label, torch.full_like(label, -1))
    category = torch.where(label >= 0, concepts.category_of(iou.device)[label.clamp_min(0)], torch.full_like(label, -1))
    cat_label = torch.full((units, concepts.num_categories), -1, dtype=torch.long, device=iou.device)
    cat_score = torch.zeros(units, concepts.num_categories, dtype=iou.dtype, device=iou.device)
    for k, (start, size) in enumerate(zip(concepts.offsets, concepts.sizes)):
        if size == 0:
            continue
        best, index = iou[:, start:start + size].max(dim=1)
        cat_score[:, k] = best
        cat_label[:, k] = torch.where(best > 0, index + start, torch.full_like(index, -1))
    return UnitLabels(label, score, category, cat_label, cat_score)


def count_detectors(labels: UnitLabels, concepts: ConceptSet, iou_threshold: float) -> dict[str, float]:
    """Detectors and unique concepts, overall and per category, in both counting conventions.

    - one label per unit (``detectors``, ``unique``): a unit is a detector of its arg-max concept when that IoU
      exceeds ``iou_threshold``; per category, the detectors whose label falls in it;
    - every category (``*_multi``, the paper's count, docs/protocols.md): a unit is a detector in each
      category where its best concept of that category exceeds the threshold, so it may count in several;
      ``unique_multi`` is the number of distinct concepts so detected (summed over categories).
    """
    detector = labels.score > iou_threshold
    out: dict[str, float] = {
        "units": float(labels.score.numel()),
        "detectors": float(detector.sum()),
        "unique": float(labels.label[detector].unique().numel()),
    }
    unique_multi = 0
    for k, category in enumerate(concepts.categories):
        single = detector & (labels.category == k)
        multi = labels.category_score[:, k] > iou_threshold
        n_unique_multi = labels.category_label[multi, k].unique().numel()
        unique_multi += n_unique_multi
        out[f"{category}.detectors"] = float(single.sum())
        out[f"{category}.unique"] = float(labels.label[single].unique().numel())
        out[f"{category}.detectors_multi"] = float(multi.sum())
        out[f"{category}.unique_multi"] = float(n_unique_multi)
    out["unique_multi"] = float(unique_multi)
    return out


# --------------------------------------------------------------------------------------------- numpy reference


def bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``n_out x n_in`` float64 matrix of 1-d linear interpolation, ``align_corners=False`` (torch's convention)."""
    scale = n_in / n_out
    src = np.maximum((np.arange(n_out) + 0.5) * scale - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w1 = src - i0
    matrix = np.zeros((n_out, n_in))
    np.add.at(matrix, (np.arange(n_out), i0), 1.0 - w1)
    np.add.at(matrix, (np.arange(n_out), i1), w1)
    return matrix


def pil_bilinear(feature: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """NetDissect-Lite's ``scipy.misc.imresize(feature, (sh, sw), mode='F')``: PIL's bilinear resize of a float map."""
    from PIL import Image

    resample = Image.Resampling.BILINEAR if hasattr(Image, "Resampling") else Image.BILINEAR
    return np.asarray(Image.fromarray(np.ascontiguousarray(feature, dtype=np.float32)).resize((size[1], size[0]), resample))


def tally_reference_numpy(activations: np.ndarray, thresholds: np.ndarray, pixels: np.ndarray, images: np.ndarray,
                          size: tuple[int, int], category_of: np.ndarray, num_categories: int,
                          upsample: str = "matrix") -> dict[str, np.ndarray]:
    """The reference code's per-image, per-unit loop (NetDissect-Lite ``tally_job``), with NetDissect's union.

    ``activations`` ``N x U x h x w``; ``thresholds`` ``U``; ``pixels`` ``N x D x H x W`` flat concept indices
    (-1 none); ``images`` ``N x L`` (-1 none). ``upsample``: ``"matrix"`` (bilinear in float64 with the
    interpolation matrices, the oracle of the tests) or ``"pil"`` (PIL's bilinear resize, as the reference's
    ``imresize(mode='F')``). Returns the counts of :class:`Tally` as numpy arrays. Slow by design: the baseline of
    ``benchmarks/dissection.py``.
    """
    if upsample not in ("matrix", "pil"):
        raise ComponentError(f"tally_reference_numpy: upsample {upsample!r} must be 'matrix' or 'pil'")
    n, units, h, w = activations.shape
    num_concepts = len(category_of)
    rows, cols = bilinear_matrix(h, size[0]), bilinear_matrix(w, size[1])
    area = size[0] * size[1]
    intersection = np.zeros((units, num_concepts), np.int64)
    activation = np.zeros((units, num_categories), np.int64)
    unit_pixels = np.zeros(units, np.int64)
    ground_truth = np.zeros(num_concepts, np.int64)
    for i in range(n):
        layer_labels = pixels[i]  # D x H x W
        image_labels = images[i][images[i] >= 0]
        present = layer_labels[layer_labels >= 0]
        ground_truth += np.bincount(present, minlength=num_concepts)
        ground_truth += area * np.bincount(image_labels, minlength=num_concepts)
        carries = np.zeros(num_categories, bool)
        carries[category_of[present]] = True
        carries[category_of[image_labels]] = True
        for k in range(units):
            feature = activations[i, k]
            if feature.max() <= thresholds[k]:
                continue
            up = rows @ feature @ cols.T if upsample == "matrix" else pil_bilinear(feature, size)
            indexes = np.argwhere(up > thresholds[k])  # as the reference: pixel coordinates, then fancy indexing
            count = len(indexes)
            unit_pixels[k] += count
            activation[k] += count * carries
            hits = layer_labels[:, indexes[:, 0], indexes[:, 1]]
            intersection[k] += np.bincount(hits[hits >= 0], minlength=num_concepts)
            intersection[k, image_labels] += count
    return {"intersection": intersection, "activation": activation, "unit_pixels": unit_pixels,
            "ground_truth": ground_truth}


# --------------------------------------------------------------------------------------------- distributed runs
# What a dissection on several ranks combines: the ranks' top activations and their tallies (``dist``: an
# :class:`interpbench.core.state.Dist`, or anything with ``world``, ``all_gather_tensor`` and ``all_reduce_sum``).


def gathered_top(dist: Any, values: torch.Tensor, k: int,
                 indices: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The top ``k`` per row over every rank (values sorted descending, ties to the lowest index when ``indices``
    are given), from each rank's own top ``k`` (``U x <=k``, sorted): the union of the ranks' top ``k`` holds the
    overall top ``k``, so the result is exact. In one process: the input."""
    if dist.world == 1:
        return values, indices
    pad = k - values.shape[1]
    values = F.pad(values, (0, pad), value=-math.inf)  # a rank with fewer than k values
    gathered = dist.all_gather_tensor(values)  # world x U x k
    merged = gathered.transpose(0, 1).reshape(values.shape[0], -1)
    if indices is None:
        return torch.topk(merged, k, dim=1, largest=True, sorted=True).values, None
    indices = F.pad(indices, (0, pad), value=-1)
    all_indices = dist.all_gather_tensor(indices).transpose(0, 1).reshape(values.shape[0], -1)
    return top_by_value_then_index(merged, all_indices, k)


def sum_tally(dist: Any, tally: Tally) -> Tally:
    """``tally`` summed over the ranks (exact int64 sums; in place). In one process: ``tally``."""
    if dist.world == 1:
        return tally
    for counts in (tally.intersection, tally.activation, tally.unit_pixels, tally.ground_truth):
        dist.all_reduce_sum(counts)
    images = dist.all_reduce_sum(torch.tensor([tally.images], dtype=torch.long, device=tally.intersection.device))
    tally.images = int(images.item())
    return tally


__all__ = [
    "Bands",
    "ConceptSet",
    "ProbeLabels",
    "StreamingTopK",
    "Tally",
    "UnitLabels",
    "accumulate_tally",
    "bands",
    "bilinear_matrix",
    "concat_labels",
    "count_detectors",
    "count_mask_pixels",
    "encode_concepts",
    "exact_float",
    "gathered_top",
    "ground_truth_counts",
    "iou_from_tally",
    "label_units",
    "pil_bilinear",
    "quantile_position",
    "resize_labels",
    "sum_tally",
    "tally_reference_numpy",
    "threshold_from_top",
    "top_by_value_then_index",
    "upsample_maps",
]
