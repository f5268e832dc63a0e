"""Command line ``xreg-edu``: register your own NIfTI group, list and fetch the registered datasets.

    xreg-edu register T1.nii.gz T2.nii.gz FLAIR.nii.gz -o out/ --method xcoreg --transform rigid --classes 4
    xreg-edu datasets --list
    xreg-edu datasets open_ms myops_cmr

``register`` writes into ``OUT/``: ``warped_<name>.nii.gz`` (each with its input's affine and spacing),
``displacement_<name>.nii.gz`` (``phi_j(x) - x`` in mm, one vector component per array axis, NIfTI vector intent),
``transform.pt`` (module state + composed matrices), ``transform.json`` (settings, matrices, history, timing),
``posterior.nii.gz`` (K class maps, X-CoReg) and ``segmentation.nii.gz`` (their argmax), and ``summary.png``
(inputs before/after and the objective curve), then ``manifest.json`` (every file's size and sha256) last. All of
it is written into a temporary folder beside ``OUT`` that is renamed onto ``OUT`` only when complete, so ``OUT``
either holds a whole result (with its manifest) or nothing new; a failing write or Ctrl-C leaves the previous
state (a run killed outright leaves only its hidden staging folder, which the next run beside ``OUT`` removes).
A non-empty ``OUT`` is refused unless ``--overwrite`` (which replaces the previous xreg-edu outputs as a whole,
never mixing two runs). Input errors (unreadable file, differing dimensionality, grid or affine without
``--resample``, a single image, non-finite voxels, bad option values, an unusable output folder) print one clear
line and exit with status 2, before any registration runs; a failed write exits with 1, Ctrl-C with 130.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

EXIT_USAGE = 2
EXIT_WRITE = 1
EXIT_INTERRUPT = 130
MANIFEST = "manifest.json"
_OUTPUT_NAMES = re.compile(r"(warped|displacement)_.+\.nii\.gz|posterior\.nii\.gz|segmentation\.nii\.gz|"
                           r"transform\.(pt|json)|summary\.png|" + re.escape(MANIFEST))


def _parser() -> argparse.ArgumentParser:
    from .groupwise.api import METHODS

    p = argparse.ArgumentParser(prog="xreg-edu", description="Multi-modality groupwise image registration "
                                "(X-CoReg and baselines) and the xreg_edu dataset registry.")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("register", help="register a group of NIfTI images into their group-mean space",
                       description="Register N >= 2 co-gridded NIfTI images groupwise and write the warped images, "
                                   "transforms, posterior maps and a PNG summary.")
    r.add_argument("images", nargs="+", help="N >= 2 NIfTI files (.nii / .nii.gz) on one grid")
    r.add_argument("-o", "--output", required=True, help="output folder (created; must be new or empty)")
    r.add_argument("--overwrite", action="store_true",
                   help="replace the outputs of a previous run in --output (all of them, as a whole)")
    r.add_argument("--resample", action="store_true",
                   help="resample images whose grid or affine differs onto the first image's grid "
                        "(linear, nibabel); default: refuse them")
    r.add_argument("--method", default="xcoreg", choices=list(METHODS), help="objective (default xcoreg)")
    r.add_argument("--transform", default="rigid",
                   help="rigid | affine | ffd | svf | dense, or levels joined by '+', e.g. rigid+ffd (default rigid)")
    r.add_argument("--classes", type=int, default=4, help="number of classes K (default 4)")
    r.add_argument("--iterations", type=int, default=None, help="iteration budget per stage (default per transform)")
    r.add_argument("--step-size", type=float, default=None, help="step size eta in mm per step (default per transform)")
    r.add_argument("--bins", type=int, default=None, help="histogram bins L (default 32)")
    r.add_argument("--sample-rate", type=float, default=None,
                   help="voxel sampling rate rho in (0, 1] (default: the grid's default schedule)")
    r.add_argument("--pyramid", type=int, default=None,
                   help="resolution levels (default: the grid's default schedule, e.g. 3 for a 2 mm brain)")
    r.add_argument("--alpha", type=float, default=None, help="regularisation weight of FFD/SVF levels")
    r.add_argument("--control-spacing", type=float, default=None, help="FFD control / SVF lattice spacing in mm")
    r.add_argument("--mask", default=None, help="optional foreground mask NIfTI on the same grid")
    r.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    r.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default cpu)")
    r.add_argument("--no-png", action="store_true", help="skip the PNG summary")
    r.add_argument("--progress", action="store_true", help="show a progress bar")

    d = sub.add_parser("datasets", help="list or fetch the registered datasets",
                       description="Without arguments (or with --list) list the datasets; with names fetch them "
                                   "(sha256-checked; $XREG_EDU_MIRROR is used first).")
    d.add_argument("names", nargs="*", help="datasets to fetch")
    d.add_argument("--list", action="store_true", help="list the datasets with a one-line description")
    return p


class CLIError(Exception):
    """A user-facing input error (exit status 2)."""


# --------------------------------------------------------------------------------------------- register
# flag -> (option object, field) whose __post_init__ checks the value: one set of rules for the API and the CLI
_OPTION_FLAGS = {"--bins": ("objective", "bins"), "--step-size": ("schedule", "step_size"),
                 "--iterations": ("schedule", "iterations"), "--pyramid": ("schedule", "pyramid"),
                 "--sample-rate": ("schedule", "sample_rate")}
_HINTS = {"--control-spacing": "mm between control points; must be a finite number > 0, e.g. 20",
          "--step-size": "mm per step; must be a finite number > 0",
          "--sample-rate": "fraction of voxels; must be in (0, 1]"}


def _flag_error(flag: str, value, err: Exception) -> CLIError:
    hint = _HINTS.get(flag, str(err))
    return CLIError(f"invalid {flag} {value} ({hint})")


def _build_options(args) -> tuple:
    """``(transform levels, objective options, schedule overrides)`` from the flags, each value checked by the
    option object that holds it (exit 2 before anything is read or run)."""
    from ._checks import check_classes
    from .groupwise import ObjectiveOptions, ScheduleOptions, parse_transform

    makers = {"objective": ObjectiveOptions, "schedule": ScheduleOptions}
    given = {}
    for flag, (kind, name) in _OPTION_FLAGS.items():
        value = getattr(args, name)
        if value is None:
            continue
        try:
            makers[kind](**{name: value})
        except (ValueError, TypeError) as err:
            raise _flag_error(flag, value, err) from err
        given[name] = value
    try:
        check_classes(args.classes)
    except (ValueError, TypeError) as err:
        raise _flag_error("--classes", args.classes, err) from err
    for flag, name in (("--alpha", "alpha"), ("--control-spacing", "control_spacing")):
        value = getattr(args, name)
        if value is not None:
            kind = "ffd" if name == "control_spacing" else "svf"
            try:
                parse_transform(kind, **{name: value})
            except (ValueError, TypeError) as err:
                raise _flag_error(flag, value, err) from err
    try:
        levels = parse_transform(args.transform, alpha=args.alpha, control_spacing=args.control_spacing,
                                 velocity_spacing=args.control_spacing)
    except (ValueError, TypeError) as err:
        raise _flag_error("--transform", args.transform, err) from err
    objective = ObjectiveOptions(bins=given.pop("bins", ObjectiveOptions.bins))
    return levels, objective, given


def _schedule(overrides: dict, shape, spacing):
    """The default schedule of this grid (:func:`~xreg_edu.groupwise.schedule.default_schedule`) with the flags
    the user gave; ``None`` (the same default) when none was given. A given ``--pyramid`` starts from
    :class:`~xreg_edu.groupwise.ScheduleOptions` defaults instead (the default schedule's per-stage values are
    sized for its own pyramid)."""
    import dataclasses

    from .groupwise import ScheduleOptions
    from .groupwise.schedule import default_schedule

    if not overrides:
        return None
    if "pyramid" in overrides:
        return ScheduleOptions(**overrides)
    return dataclasses.replace(default_schedule(shape, spacing), **overrides)


def _check_device(device) -> None:
    import torch

    if device is None:
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as err:
        raise CLIError(f"invalid --device {device!r} ({err}); use e.g. cpu or cuda") from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise CLIError(f"--device {device}: CUDA is not available here (torch {torch.__version__}, "
                           f"CUDA build {torch.version.cuda or 'none'}); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise CLIError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise CLIError(f"--device {device}: MPS is not available here; use --device cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise CLIError(f"--device {device}: unsupported device type {dev.type!r}; use cpu or cuda")


def _check_output(out: Path, overwrite: bool) -> None:
    """Refuse an unusable output folder before anything runs: a file, below a file, not writable, or non-empty
    (without --overwrite, or with foreign files in it)."""
    if out.exists() and not out.is_dir():
        raise CLIError(f"output {out} is a file, not a folder; choose a new folder for -o")
    parent = out.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise CLIError(f"output {out} cannot be created: {parent} is a file, not a folder")
    if out.is_dir():
        if not os.access(out, os.W_OK | os.X_OK):
            raise CLIError(f"output folder {out} is not writable; choose another folder for -o")
        entries = sorted(p.name for p in out.iterdir())
        if entries and not overwrite:
            raise CLIError(f"output folder {out} is not empty ({len(entries)} entries, e.g. {entries[:3]}); "
                           f"pass --overwrite to replace a previous run's outputs, or choose a new folder")
        foreign = [e for e in entries if not _OUTPUT_NAMES.fullmatch(e)]
        if foreign:
            raise CLIError(f"--overwrite replaces xreg-edu outputs only, but {out} also holds {foreign[:3]}"
                           f"{' ...' if len(foreign) > 3 else ''}; move them away or choose another folder")
    try:  # the staging folder will be made beside OUT: try it now, not after the registration
        out.absolute().parent.mkdir(parents=True, exist_ok=True)
        os.rmdir(tempfile.mkdtemp(prefix=f".{out.name}.probe-", dir=out.absolute().parent))
    except OSError as err:
        raise CLIError(f"output {out} is not writable: cannot create a folder in {out.absolute().parent} "
                       f"({err.strerror or err}); choose another folder for -o") from err


def _load(paths: list[str], device, resample: bool = False):
    from .datasets.errors import DatasetError
    from .io import load_nifti_group

    if len(paths) < 2:
        raise CLIError(f"a group needs at least 2 images, got {len(paths)}: {paths}")
    try:
        return load_nifti_group(paths, device=device or "cpu", resample=resample)
    except (DatasetError, OSError, ValueError) as err:
        raise CLIError(str(err)) from err


def _load_mask(path: str, shape):
    """Read a mask NIfTI on the images' grid -> ``[*S]`` bool (voxels > 0)."""
    import nibabel as nib
    import numpy as np
    import torch

    if not Path(path).is_file():
        raise CLIError(f"mask: no such file: {path}")
    try:
        arr = np.asarray(nib.load(path).dataobj)
    except Exception as err:  # nibabel raises many types
        raise CLIError(f"mask: cannot read {path} as NIfTI: {type(err).__name__}: {err}") from err
    while arr.ndim > len(shape) and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if tuple(arr.shape) != tuple(shape):
        raise CLIError(f"mask {path} has shape {tuple(arr.shape)}, the images have {tuple(shape)}")
    mask = torch.from_numpy(np.ascontiguousarray(arr > 0))
    if not bool(mask.any()):
        raise CLIError(f"mask {path} is empty (no voxel > 0)")
    return mask


def _stem(name: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return safe or "image"


def _save_vector_field(field, affine, path: Path) -> None:
    """Write ``[d, *S]`` as a NIfTI vector image (shape ``X, Y, Z, 1, d``, intent VECTOR)."""
    import nibabel as nib
    import numpy as np

    arr = field.detach().cpu().numpy().astype(np.float32)
    arr = np.moveaxis(arr, 0, -1)                           # [*S, d]
    while arr.ndim < 4:                                     # pad spatial axes to 3
        arr = arr[..., None, :]
    arr = arr[..., None, :]                                 # [X, Y, Z, 1, d]
    img = nib.Nifti1Image(arr, np.asarray(affine, dtype=float))
    img.header.set_intent("vector", (), name="disp_mm")
    img.header.set_xyzt_units("mm")
    nib.save(img, str(path))


def _save_outputs(group, result, out: Path, png: bool) -> list[Path]:
    """Write every output file into the (staging) folder ``out``; returns their paths."""
    import numpy as np
    import torch

    from .io import save_nifti

    written = []
    affines = group.affines if group.affines is not None else np.stack([np.eye(4)] * len(group))
    names = [_stem(n) for n in group.names]
    if len(set(names)) < len(names):
        names = [f"{i:03d}_{n}" for i, n in enumerate(names)]
    disp = result.displacement()
    for j, name in enumerate(names):
        written.append(save_nifti(result.warped[j, 0].float(), affines[j], out / f"warped_{name}.nii.gz"))
        p = out / f"displacement_{name}.nii.gz"
        _save_vector_field(disp[j], affines[j], p)
        written.append(p)
    if result.posterior is not None:
        import nibabel as nib
        post = result.posterior.detach().cpu().numpy().astype(np.float32)      # [K, *S]
        arr = np.moveaxis(post, 0, -1)
        if arr.ndim == 3:                                                     # 2-D: X, Y, 1, K
            arr = arr[:, :, None, :]
        p = out / "posterior.nii.gz"
        nib.save(nib.Nifti1Image(arr, np.asarray(affines[0], float)), str(p))
        written.append(p)
        written.append(save_nifti(result.segmentation().to(torch.int32), affines[0], out / "segmentation.nii.gz"))
    tr = result.transform
    matrices = tr.matrix().detach().cpu() if hasattr(tr, "matrix") else None
    torch.save({"state_dict": {k: v.cpu() for k, v in tr.state_dict().items()},
                "levels": [type(lv).__name__ for lv in tr.levels], "matrices": matrices,
                "spacing": result.spacing, "shape": tuple(result.points.shape[2:]), "names": group.names},
               out / "transform.pt")
    written.append(out / "transform.pt")
    info = {"inputs": group.meta.get("paths", group.names), "names": group.names, "method": result.method,
            "options": {k: (v if isinstance(v, (int, float, str, bool, type(None), list, tuple, dict)) else str(v))
                        for k, v in result.options.items()},
            "spacing_mm": list(result.spacing), "shape": list(result.points.shape[2:]),
            "matrices_common_to_image_mm": None if matrices is None else matrices.tolist(),
            "displacement_convention": "phi_j(x) - x in mm, component k along array axis k, centred frame",
            "prior": None if result.prior is None else result.prior.detach().cpu().flatten().tolist()[:64],
            "history": result.history, "stages": result.stages, "seconds": result.seconds,
            "converged": result.converged}
    (out / "transform.json").write_text(json.dumps(info, indent=1, default=str))
    written.append(out / "transform.json")
    if png:
        written.append(_summary_png(group, result, out / "summary.png"))
    return written


def _write_manifest(folder: Path, written: list[Path], args) -> Path:
    """``manifest.json``, written last: every output's size and sha256 (its presence marks a complete run)."""
    from . import __version__
    from ._files import file_sha256

    files = {p.name: {"bytes": p.stat().st_size, "sha256": file_sha256(p)} for p in written}
    path = folder / MANIFEST
    path.write_text(json.dumps({"complete": True, "xreg_edu": __version__, "inputs": list(args.images),
                                "files": files}, indent=1))
    return path


def _install(staging: Path, out: Path) -> None:
    """Rename the complete staging folder onto ``out``; a previous ``out`` is moved aside first and removed
    after, so ``out`` never mixes two runs (and is restored if the rename fails)."""
    from ._files import apply_umask

    apply_umask(staging)                        # mkdtemp folders are private (0700)
    if not out.exists():
        os.rename(staging, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-{os.getpid()}-", dir=out.parent))
    os.rename(out, old / out.name)
    try:
        os.rename(staging, out)
    except BaseException:
        os.rename(old / out.name, out)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


def _remove_stale_staging(out: Path) -> None:
    """Remove the hidden staging folders ``.OUT.partial-PID-*`` / ``.OUT.old-PID-*`` left beside ``out`` by a run
    that was killed (SIGKILL, power loss) before it could clean up: those whose process no longer exists."""
    for path in out.parent.glob(f".{glob.escape(out.name)}.*-*-*"):
        match = re.fullmatch(rf"\.{re.escape(out.name)}\.(partial|old)-(\d+)-[^/]+", path.name)
        if not (match and path.is_dir()):
            continue
        try:
            os.kill(int(match.group(2)), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except (PermissionError, OverflowError):   # alive under another user / not a pid: leave it
            pass


def _write_outputs(group, result, out: Path, args) -> list[Path]:
    """All outputs into a temporary folder beside ``out``, manifest last, then one rename into place; on any
    error or Ctrl-C the temporary folder is removed and ``out`` keeps its previous state."""
    out = out.absolute()
    _remove_stale_staging(out)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-{os.getpid()}-", dir=out.parent))
    try:
        written = _save_outputs(group, result, staging, png=not args.no_png)
        written.append(_write_manifest(staging, written, args))
        _check_output(out, args.overwrite)      # again: another run may have filled OUT in the meantime
        _install(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [out / p.name for p in written]


def _middle(x):
    """A 2-D view ``[H, W]`` of a ``[*S]`` array (middle slice of the first axis for 3-D)."""
    return x[x.shape[0] // 2] if x.ndim == 3 else x


def _summary_png(group, result, path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    n = len(group)
    show = list(range(min(n, 6)))
    extra = 1 if result.posterior is not None else 0
    fig, axes = plt.subplots(2, len(show) + 1 + extra, figsize=(2.4 * (len(show) + 1 + extra), 5.0),
                             squeeze=False)
    before = group.images.detach().cpu().numpy()[:, 0]
    after = result.warped.detach().cpu().numpy()[:, 0]
    for c, j in enumerate(show):
        for r, (arr, lab) in enumerate(((before, "before"), (after, "after"))):
            img = _middle(arr[j])
            lo, hi = np.percentile(img, [0.5, 99.5])
            axes[r, c].imshow(img, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1)
            axes[r, c].set_title(f"{group.names[j][:18]}\n{lab}" if r == 0 else lab, fontsize=8)
            axes[r, c].axis("off")
    # colour composite of the first three images (R, G, B): misalignment shows as colour fringes
    c = len(show)
    for r, arr in enumerate((before, after)):
        chans = []
        for j in range(3):
            img = _middle(arr[min(j, n - 1)])
            lo, hi = np.percentile(img, [1, 99])
            chans.append(np.clip((img - lo) / (hi - lo + 1e-8), 0, 1))
        axes[r, c].imshow(np.stack(chans, -1))
        axes[r, c].set_title("RGB overlay " + ("before" if r == 0 else "after"), fontsize=8)
        axes[r, c].axis("off")
    if extra:
        seg = _middle(result.segmentation().cpu().numpy())
        axes[0, c + 1].imshow(seg, cmap="tab10", interpolation="nearest")
        axes[0, c + 1].set_title("posterior argmax", fontsize=8)
        axes[0, c + 1].axis("off")
        ax = axes[1, c + 1]
    else:
        ax = axes[1, c]
        ax.cla()
    ax.plot(result.history, lw=1)
    ax.set_title("objective", fontsize=8)
    ax.set_xlabel("iteration", fontsize=7)
    ax.tick_params(labelsize=6)
    fig.suptitle(f"xreg-edu: {result.method}, {result.iterations} iterations, {result.seconds:.1f} s", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def cmd_register(args) -> int:
    from .groupwise import register_group

    levels, objective, overrides = _build_options(args)
    _check_device(args.device)
    _check_output(Path(args.output), args.overwrite)
    group = _load(args.images, args.device, args.resample)
    mask = _load_mask(args.mask, group.shape) if args.mask else None
    try:
        result = register_group(group, method=args.method, transform=levels, num_classes=args.classes, mask=mask,
                                seed=args.seed, device=args.device, progress=args.progress, objective=objective,
                                schedule=_schedule(overrides, group.shape, group.spacing))
    except (ValueError, TypeError) as err:
        raise CLIError(str(err)) from err
    try:
        written = _write_outputs(group, result, Path(args.output), args)
    except OSError as err:
        print(f"xreg-edu: error: writing the outputs failed ({err}); nothing was written to {args.output}",
              file=sys.stderr)
        return EXIT_WRITE
    print(result.summary())
    print(f"wrote {len(written)} files to {args.output}")
    return 0


# --------------------------------------------------------------------------------------------- datasets
def cmd_datasets(args) -> int:
    from .datasets import dataset_card, fetch, list_datasets
    from .datasets.errors import DatasetError

    names = list_datasets()
    if args.list or not args.names:
        for name in names:
            card = dataset_card(name)
            print(f"{name:16s} {card.title}")
        return 0
    unknown = [n for n in args.names if n not in names]
    if unknown:
        raise CLIError(f"unknown dataset(s) {unknown}; known: {names}")
    for name in args.names:
        try:
            paths = fetch(name)
        except (DatasetError, OSError) as err:
            raise CLIError(f"{name}: {err}") from err
        print(f"{name}: {len(paths)} files, e.g. {paths[0]}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``xreg-edu``; returns the exit status (0 ok, 2 input error)."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "register":
            return cmd_register(args)
        return cmd_datasets(args)
    except CLIError as err:
        print(f"xreg-edu: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        where = f"; nothing was written to {args.output}" if args.command == "register" else ""
        print(f"xreg-edu: interrupted{where}", file=sys.stderr)
        return EXIT_INTERRUPT


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
