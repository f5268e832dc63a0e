"""Looking inside BIGR-lite: structural representation maps and counterfactual reconstructions.

Our reconstruction, *inspired by* Luo et al. (arXiv 2401.02141), whose figures show categorical structural maps and
counterfactuals under "ontological" edits (of the anatomy z) and under diffeomorphic edits (of the geometry φ). The
official code is not public; these are our versions:

- :func:`structural_maps`: each image's representation (image space and common space) and the PoE posterior.
- :func:`counterfactual_anatomy`: keep every image's geometry and appearance, edit z (e.g. swap or merge two
  structures, or move one), regenerate all N images.
- :func:`counterfactual_geometry`: keep z and the appearance, edit the fields (scale them, swap them between images,
  or give every image the field of one image), regenerate.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .model import BIGRLite


def _infer(model: BIGRLite, images: Tensor, spacing):
    model.eval()
    with torch.no_grad():
        return model(images, tuple(float(s) for s in spacing))


def structural_maps(model: BIGRLite, images: Tensor, spacing) -> dict[str, Tensor]:
    """The structural representations the model sees.

    Args:
        model: trained model; images: ``[N, 1, *S]``; spacing: mm per axis.

    Returns:
        dict with ``"image_space"`` ``[N, K, *S]`` (s_j), ``"common_space"`` ``[N, K, *S]`` (s̃_j = s_j ∘ φ_j),
        ``"posterior"`` ``[1, K, *S]`` (q(z|u,v)), ``"hard"`` ``[1, *S]`` argmax of the posterior (C variants; for P,
        argmax over feature channels), ``"recon"`` ``[N, 1, *S]``.
    """
    spacing = tuple(float(s) for s in spacing)
    out = _infer(model, images, spacing)
    with torch.no_grad():
        recon = model.generate(out.posterior, out.field, out.appearance, spacing)
    return {"image_space": out.representation, "common_space": out.warped_representation,
            "posterior": out.posterior, "hard": out.posterior.argmax(1), "recon": recon}


def swap_structures(k1: int, k2: int) -> Callable[[Tensor], Tensor]:
    """An anatomy edit that exchanges channels k1 and k2 of z (an "ontological" transformation)."""
    def edit(z: Tensor) -> Tensor:
        idx = list(range(z.shape[1]))
        idx[k1], idx[k2] = idx[k2], idx[k1]
        return z[:, idx]
    return edit


def merge_structures(source: int, target: int) -> Callable[[Tensor], Tensor]:
    """An anatomy edit that moves all probability of structure ``source`` to ``target`` (removes a structure)."""
    def edit(z: Tensor) -> Tensor:
        z = z.clone()
        z[:, target] += z[:, source]
        z[:, source] = 0
        return z
    return edit


def counterfactual_anatomy(model: BIGRLite, images: Tensor, spacing, edit: Callable[[Tensor], Tensor]) -> dict:
    """Regenerate the group from an edited anatomy, same geometry and same appearance.

    Args:
        model: trained model; images: ``[N, 1, *S]``; spacing: mm per axis.
        edit: ``z [1, K, *S] -> z' [1, K, *S]`` (e.g. :func:`swap_structures`, :func:`merge_structures`).

    Returns:
        dict ``{"original": û [N,1,*S], "counterfactual": û' [N,1,*S], "anatomy": z, "edited": z'}``.
    """
    spacing = tuple(float(s) for s in spacing)
    out = _infer(model, images, spacing)
    z = out.posterior
    z_new = edit(z)
    if z_new.shape != z.shape:
        raise ValueError(f"edit must keep the anatomy's shape {tuple(z.shape)}, got {tuple(z_new.shape)}")
    with torch.no_grad():
        original = model.generate(z, out.field, out.appearance, spacing)
        cf = model.generate(z_new, out.field, out.appearance, spacing)
    return {"original": original, "counterfactual": cf, "anatomy": z, "edited": z_new}


def counterfactual_geometry(model: BIGRLite, images: Tensor, spacing, *, scale: float | None = None,
                            permutation=None, field: Tensor | None = None) -> dict:
    """Regenerate the group from an edited geometry, same anatomy and same appearance.

    Exactly one edit: ``scale`` (v_j -> scale · v_j; for D variants this walks along the geodesic exp(t v)),
    ``permutation`` (image j receives the field of image ``permutation[j]``), or ``field`` (``[N, d, *S]`` mm).

    Returns:
        dict ``{"original": û, "counterfactual": û', "field": v, "edited_field": v'}``.
    """
    spacing = tuple(float(s) for s in spacing)
    if sum(x is not None for x in (scale, permutation, field)) != 1:
        raise ValueError("give exactly one of scale, permutation or field")
    out = _infer(model, images, spacing)
    v = out.field
    if scale is not None:
        v_new = v * float(scale)
    elif permutation is not None:
        perm = torch.as_tensor(list(permutation), device=v.device)
        if perm.numel() != v.shape[0] or int(perm.min()) < 0 or int(perm.max()) >= v.shape[0]:
            raise ValueError(f"permutation must hold N = {v.shape[0]} image indices in 0..{v.shape[0] - 1}")
        v_new = v[perm]
    else:
        if field.shape != v.shape:
            raise ValueError(f"field must have shape {tuple(v.shape)}, got {tuple(field.shape)}")
        v_new = field.to(v)
    with torch.no_grad():
        original = model.generate(out.posterior, v, out.appearance, spacing)
        cf = model.generate(out.posterior, v_new, out.appearance, spacing)
    return {"original": original, "counterfactual": cf, "field": v, "edited_field": v_new}
