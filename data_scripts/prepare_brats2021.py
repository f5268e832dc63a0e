#!/usr/bin/env python
"""BraTS 2021 (FLAIR, T1, T1ce, T2 + tumour labels, co-registered, 1 mm) -> one ImageGroup per case.

Download the RSNA-ASNR-MICCAI BraTS 2021 training data (https://www.synapse.org/brats , registration) so that
the folder holds BraTS2021_XXXXX/BraTS2021_XXXXX_{flair,t1,t1ce,t2,seg}.nii.gz.
Labels: 1 necrotic core, 2 edema, 4 enhancing tumour (kept as 1, 2, 3).
"""
from _prepare_common import need, parser, read, remap, save

args = parser(__doc__.splitlines()[0]).parse_args()
for case in need(sorted(p for p in args.input.glob("BraTS2021_*") if p.is_dir()), "BraTS2021_* folders")[: args.limit]:
    images, aff = {}, None
    for m in ("flair", "t1", "t1ce", "t2"):
        images[m.upper()], aff = read(case / f"{case.name}_{m}.nii.gz")
    seg = case / f"{case.name}_seg.nii.gz"
    labels = remap(read(seg, label=True)[0], {1: 1, 2: 2, 4: 3}) if seg.exists() else None
    save(args.output, case.name, images, aff, labels,
         {0: "background", 1: "necrotic core", 2: "edema", 3: "enhancing tumour"}, {"dataset": "brats2021"},
         args.nifti)
