"""BIGR-lite: a hierarchical VAE for groupwise registration (eq. 7–9), disentangling anatomy from geometry.

**Our reconstruction, inspired by** Luo, Wang, Shapiro, Yuan, Feng & Zhuang, "Bayesian Unsupervised
Disentanglement of Anatomy and Geometry for Deep Groupwise Image Registration" (arXiv 2401.02141, v2) and Wang, Luo & Zhuang,
"Bayesian intrinsic groupwise registration via explicit hierarchical disentanglement" (IPMI 2023). Their code is not
public; the architecture, posterior details and training schedule here are our own choices (spec §9.2, tag [R]).

Modules (one job each):
    networks    shared structural encoder, registration head
    posterior   product of experts (categorical / Gaussian)
    functional  the pointwise imaging functional f_j (eq. 8), mean images for counterfactuals
    elbo        eq. 9, every term exact: class-conditional appearance in closed form, π prior, MAP geometry
    teacher     X-CoReg's EM posterior of aligned training groups (the declared unsupervised warm start)
    weights     sha256-checked weight files with JSON sidecars
    model       BIGRConfig, BIGRLite (variants PN, CN, PD, CD)
    data        real training/test groups (patient split) with synthetic misalignment
    train       seeded training (warm start + MAP-ELBO, DDP under torchrun), checkpoints, pretrained weights
    distributed torch.distributed helpers (DDP)
    inference   register a group of any N
    interpret   structural maps, counterfactual reconstructions
"""
import importlib

_EXPORTS = {
    "ELBOTerms": "elbo", "elbo_terms": "elbo", "class_log_density": "elbo", "expected_log_likelihood": "elbo",
    "kl_categorical": "elbo", "kl_gaussian_standard": "elbo", "kl_geometry_delta": "elbo",
    "smoothness_energy": "elbo",
    "VAERegistration": "inference", "evaluate_group": "inference", "register": "inference",
    "VARIANTS": "model", "BIGRConfig": "model", "BIGRLite": "model", "BIGROutput": "model",
    "pair_agreement": "model",
    "poe_categorical": "posterior", "poe_gaussian": "posterior",
    "heldout_groups": "data", "patient_split": "data",
    "load_checkpoint": "train", "load_pretrained": "train", "save_checkpoint": "train",
    "load_weights": "weights", "save_weights": "weights",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    # lazy, so that ``python -m xreg_edu.vae.train`` does not import the module twice
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'xreg_edu.vae' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
