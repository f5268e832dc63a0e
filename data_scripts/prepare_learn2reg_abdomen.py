#!/usr/bin/env python
"""Learn2Reg AbdomenMRCT (paired MR + CT, 2 mm, 192x160x192) -> one two-modality ImageGroup per paired case.

Download from https://learn2reg.grand-challenge.org/Datasets/ and unpack (imagesTr/, labelsTr/). Paired cases are
AbdomenMRCT_XXXX_0000.nii.gz (MR) and AbdomenMRCT_XXXX_0001.nii.gz (CT). Labels: 1 liver, 2 spleen,
3 right kidney, 4 left kidney (the MR labels are stored with the group).
"""
from _prepare_common import need, parser, read, save

args = parser(__doc__.splitlines()[0]).parse_args()
mrs = need(sorted(args.input.glob("imagesTr/AbdomenMRCT_*_0000.nii.gz")), "imagesTr/AbdomenMRCT_*_0000.nii.gz")
for mr in mrs[: args.limit]:
    ct = mr.with_name(mr.name.replace("_0000.nii.gz", "_0001.nii.gz"))
    if not ct.exists():
        continue  # unpaired MR (CHAOS part)
    case = mr.name[: -len("_0000.nii.gz")]
    (a_mr, aff), (a_ct, _) = read(mr), read(ct)
    lab = args.input / "labelsTr" / mr.name
    labels = read(lab, label=True)[0] if lab.exists() else None
    save(args.output, case, {"MR": a_mr, "CT": a_ct}, aff, labels,
         {0: "background", 1: "liver", 2: "spleen", 3: "right kidney", 4: "left kidney"},
         {"dataset": "learn2reg_abdomen_mrct"}, args.nifti)
