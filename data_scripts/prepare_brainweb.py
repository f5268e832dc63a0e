#!/usr/bin/env python
"""BrainWeb normal brain (T1, T2, PD + crisp phantom, 1 mm) -> one ImageGroup.

Download from https://brainweb.bic.mni.mcgill.ca/brainweb/selection_normal.html (MINC, e.g.
t1_icbm_normal_1mm_pn0_rf0.mnc, t2_..., pd_...) and the discrete model phantom_1.0mm_normal_crsp.mnc
(anatomic_normal.html) into one folder. Usage: python prepare_brainweb.py IN OUT [--nifti]
"""
from _prepare_common import need, parser, read, save

from xreg_edu.datasets.registry import BRAINWEB_CLASSES

args = parser(__doc__.splitlines()[0]).parse_args()
images, affine = {}, None
for m in ("t1", "t2", "pd"):
    path = need(sorted(args.input.glob(f"{m}_*.mnc*")), f"{m}_*.mnc")[0]
    images[m.upper()], affine = read(path)
crisp = sorted(args.input.glob("*crsp*.mnc*")) + sorted(args.input.glob("*crisp*.mnc*"))
labels = read(crisp[0], label=True)[0] if crisp else None
save(args.output, "brainweb_normal", images, affine, labels, BRAINWEB_CLASSES if crisp else None,
     {"dataset": "brainweb_full"}, args.nifti)
