"""Training and test groups for BIGR-lite from the real datasets of the registry.

The multi-sequence cardiac cases (``myops_cmr``: bSSFP/LGE/T2, natively co-registered, labels myocardium/LV/RV) are
split *by patient* (the registry card's official train Case3001–3025 / test Case3026–3037, with a validation part
carved from the training cases), as in the talk's MS-CMRSeg experiment; every labelled short-axis slice of a
patient is one 2-D group. A synthetic misalignment (random SVF or FFD, group mean zero, :func:`xreg_edu.simulate.misalign`)
is drawn on top of the native alignment each time a group is used, so the labels give the ground truth. Larger test
groups (N = 10, 60, 120 ...) repeat a slice's modalities, each copy with its own misalignment: every image of the
group then shares one true anatomy, and groupwise Dice measures registration alone.
"""
from __future__ import annotations

import functools
from dataclasses import replace

import torch
from torch import Tensor

from ..group import ImageGroup

#: validation patients carved from the official training cases (used for every model choice; never the test cases)
VALIDATION = {"myops_cmr": ("Case3021", "Case3022", "Case3023", "Case3024", "Case3025")}
#: default misalignment for training and testing (mm; control spacing = 1/4 of the field of view). 15 mm at 64²
#: (2.4 mm pixels) gives a groupwise Dice of about 0.7 before registration, like the talk's MS-CMRSeg table.
MISALIGNMENT = {"kind": "svf", "magnitude_mm": 15.0}
#: the held-out evaluation protocol shared by every table (this module's :func:`heldout_groups`)
HELDOUT = {"dataset": "myops_cmr", "size": 64, "n": 3, "seed": 1000, "misalignment": MISALIGNMENT}


def patient_split(dataset: str = "myops_cmr", validation: bool = True) -> dict[str, tuple[str, ...]]:
    """The registry's patient split: ``{"train", "val", "test"}`` subject names.

    ``train`` and ``val`` partition the card's official ``train_subjects`` (``val`` = ``VALIDATION``, empty when
    ``validation=False``); ``test`` = the card's ``test_subjects``. Train only on ``train``, choose on ``val``,
    report on ``test``.
    """
    from ..datasets import get_spec

    extra = get_spec(dataset).extra or {}
    if "train_subjects" not in extra or "test_subjects" not in extra:
        raise ValueError(f"dataset {dataset!r} has no train_subjects/test_subjects in its card's extra")
    val = tuple(VALIDATION.get(dataset, ())) if validation else ()
    train = tuple(s for s in extra["train_subjects"] if s not in val)
    return {"train": train, "val": val, "test": tuple(extra["test_subjects"])}


@functools.lru_cache(maxsize=16)
def _load_slices(dataset: str, subjects: tuple[str, ...], size: int, min_label_voxels: int) -> tuple[ImageGroup, ...]:
    from ..datasets import load_dataset

    out = []
    for s in subjects:
        vol = load_dataset(dataset, dim=3, size=size, subjects=[s])
        if vol.labels is None:
            raise ValueError(f"{dataset} has no label maps; BIGR-lite groups need labels for evaluation")
        for k in range(vol.images.shape[2]):
            lab = vol.labels[:, :, k]
            if int((lab[0] > 0).sum()) < min_label_voxels:
                continue
            out.append(ImageGroup(images=vol.images[:, :, k].contiguous(), spacing=vol.spacing[1:],
                                  names=[f"{n}/slice{k}" for n in vol.names], labels=lab.contiguous(),
                                  label_names=vol.label_names, meta={"dataset": dataset, "subject": s, "slice": k}))
    if not out:
        raise ValueError(f"no labelled slice found in {dataset} for subjects {subjects}")
    return tuple(out)


def load_slices(dataset: str = "myops_cmr", subjects=None, size: int = 64,
                min_label_voxels: int = 50) -> list[ImageGroup]:
    """Every labelled 2-D slice of the given subjects, one :class:`ImageGroup` (all modalities) per slice.

    Args:
        dataset: a registry name with multi-modal 3-D volumes and labels (``"myops_cmr"``, ``"open_ms"`` ...).
        subjects: list of subject names; default all subjects of the dataset's split (train + test).
        size: in-plane grid size (square field of view around the labelled region).
        min_label_voxels: skip slices with fewer labelled voxels.

    Returns:
        list of groups ``[M, 1, size, size]`` (M = number of modalities), cached in memory.
    """
    if subjects is None:
        split = patient_split(dataset, validation=False)
        subjects = list(split["train"]) + list(split["test"])
    return list(_load_slices(dataset, tuple(subjects), int(size), int(min_label_voxels)))


def split_slices(dataset: str = "myops_cmr", size: int = 64, part: str = "train") -> list[ImageGroup]:
    """Slices of one part (``"train"``, ``"val"`` or ``"test"``) of :func:`patient_split`."""
    split = patient_split(dataset)
    if part not in split:
        raise ValueError(f"part must be one of {sorted(split)}, got {part!r}")
    return load_slices(dataset, split[part], size)


def heldout_groups(size: int = HELDOUT["size"], seed: int = HELDOUT["seed"], n_groups: int | None = None,
                   n: int = HELDOUT["n"], misalignment: dict | None = None, dataset: str = HELDOUT["dataset"],
                   part: str = "test") -> list[tuple[ImageGroup, "object"]]:
    """The held-out evaluation protocol every table uses (identical groups for every method).

    Group i is test slice ``i mod S`` (S = number of labelled test slices, 47 for myops_cmr Case3026–3037; every
    slice is a natively aligned bSSFP/LGE/T2 group), its modalities repeated to N images, plus a random
    misalignment (``MISALIGNMENT``, group mean zero) drawn with seed ``seed + i``.

    Args:
        size: in-plane grid (pixels per side).
        seed: seed of group 0's misalignment.
        n_groups: number of groups (default: one per test slice).
        n: group size N.
        misalignment: keywords of :func:`xreg_edu.simulate.misalign` (default ``MISALIGNMENT``).
        dataset: registry name.
        part: ``"test"`` (the report) or ``"val"`` (for choices; never tune on ``"test"``).

    Returns:
        list of ``(observed ImageGroup, Misalignment)``.
    """
    slices = split_slices(dataset, size, part)
    count = len(slices) if n_groups is None else int(n_groups)
    if count < 1:
        raise ValueError(f"n_groups must be >= 1, got {n_groups}")
    return [make_group(slices[i % len(slices)], n, seed=seed + i, misalignment=misalignment) for i in range(count)]


def replicate(group: ImageGroup, n: int) -> ImageGroup:
    """The first ``n`` images of the group's modalities repeated cyclically (N = n)."""
    m = len(group)
    idx = [i % m for i in range(n)]
    out = group.subset(idx)
    return replace(out, names=[f"{nm}#{i // m}" for i, nm in enumerate(out.names)])


def make_group(slice_group: ImageGroup, n: int, seed: int, misalignment: dict | None = None):
    """A misaligned group of N images built from one slice (modalities repeated when N > M).

    Args:
        slice_group: an aligned slice (all modalities) from :func:`load_slices`.
        n: group size N >= 2.
        seed: seed of the misalignment.
        misalignment: keywords of :func:`xreg_edu.simulate.misalign` (default ``MISALIGNMENT``).

    Returns:
        ``(observed ImageGroup, Misalignment)``.
    """
    from ..simulate import misalign

    if n < 2:
        raise ValueError(f"group size must be >= 2, got {n}")
    ranges = dict(MISALIGNMENT if misalignment is None else misalignment)
    kind = ranges.pop("kind", "svf")
    return misalign(replicate(slice_group, n), kind=kind, seed=seed, **ranges)


def intensity_remap(images: Tensor, generator: torch.Generator | None = None, knots: int = 6) -> Tensor:
    """A random monotone piecewise-linear intensity map of each image, with random polarity ("a new modality").

    Used to pre-train the shared encoder: the same anatomy seen through several random contrasts forces a
    modality-agnostic structural representation (our choice, spec §9.2 "the encoder must be modality-agnostic").

    Args:
        images: ``[N, 1, *S]``.
        generator: torch generator (seeded stream).
        knots: number of knots of the map on [0, 1].

    Returns:
        ``[N, 1, *S]`` in [0, 1].
    """
    out = []
    for u in images:
        lo, hi = u.min(), u.max()
        t = (u - lo) / (hi - lo + 1e-6)
        k = torch.sort(torch.rand(knots, generator=generator))[0]
        k = (k - k[0]) / (k[-1] - k[0] + 1e-6)
        if float(torch.rand(1, generator=generator)) < 0.5:
            k = 1 - k
        pos = t * (knots - 1)
        i0 = pos.floor().clamp(0, knots - 2).long()
        w = pos - i0
        out.append(k[i0] * (1 - w) + k[i0 + 1] * w)
    return torch.stack(out).to(images.dtype)


class GroupSampler:
    """Seeded stream of misaligned training groups (N drawn from ``group_sizes``).

    Args:
        slices: aligned slice groups.
        group_sizes: the N to draw from (uniformly), e.g. ``(3, 4)``.
        seed: seed of the stream (slice choice, N and misalignment seeds).
        misalignment: keywords of :func:`xreg_edu.simulate.misalign`.
    """

    def __init__(self, slices: list[ImageGroup], group_sizes=(3, 4), seed: int = 0,
                 misalignment: dict | None = None) -> None:
        if not slices:
            raise ValueError("no slices to sample from")
        self.slices, self.group_sizes, self.misalignment = slices, tuple(group_sizes), misalignment
        self.generator = torch.Generator().manual_seed(int(seed))

    def _randint(self, n: int) -> int:
        return int(torch.randint(n, (1,), generator=self.generator))

    def __call__(self):
        """Next ``(observed ImageGroup, Misalignment)``."""
        s = self.slices[self._randint(len(self.slices))]
        n = self.group_sizes[self._randint(len(self.group_sizes))]
        return make_group(s, n, seed=self._randint(2 ** 31 - 1), misalignment=self.misalignment)
