#!/usr/bin/env python
"""MS-CMRSeg 2019 (bSSFP/C0, LGE/DE, T2 + manual labels) -> one ImageGroup per patient, on the C0 grid.

Register at https://zmiclab.github.io/zxh/0/mscmrseg19/ and unpack so that the folder holds
patientN_C0.nii.gz, patientN_DE.nii.gz (LGE), patientN_T2.nii.gz and patientN_C0_manual.nii.gz.
The sequences are acquired separately: LGE and T2 are resampled onto the C0 grid by their headers only, so they
stay misaligned - the real registration problem. Labels (of C0): 200 myocardium -> 1, 500 LV -> 2, 600 RV -> 3.
"""
from _prepare_common import need, parser, read, remap, resample_like, save

from xreg_edu.datasets.registry import CARDIAC_LABELS

args = parser(__doc__.splitlines()[0]).parse_args()
for c0 in need(sorted(args.input.glob("**/patient*_C0.nii.gz")), "patient*_C0.nii.gz")[: args.limit]:
    pid = c0.name.split("_")[0]
    ref, aff = read(c0)
    images = {"C0": ref}
    for m, key in (("LGE", "DE"), ("T2", "T2")):
        f = c0.with_name(f"{pid}_{key}.nii.gz")
        if f.exists():
            a, a_aff = read(f)
            images[m] = resample_like(a, a_aff, ref.shape, aff)
    lab = c0.with_name(f"{pid}_C0_manual.nii.gz")
    labels = remap(read(lab, label=True)[0], {200: 1, 500: 2, 600: 3}) if lab.exists() else None
    save(args.output, pid, images, aff, labels, CARDIAC_LABELS, {"dataset": "mscmrseg2019"}, args.nifti)
