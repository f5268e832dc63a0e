#!/usr/bin/env python
"""neurite-OASIS (414 subjects, aligned T1 + FreeSurfer seg) -> ImageGroups of ``--group-size`` subjects each.

Download https://surfer.nmr.mgh.harvard.edu/ftp/data/neurite/data/neurite-oasis.v1.0.tar (3-D, 6.6 GB) or
neurite-oasis.2d.v1.0.tar (2-D slices); unpack so the folder holds OASIS_OAS1_XXXX_MR1/aligned_norm.nii.gz and
aligned_seg35.nii.gz (3-D) or slice_norm.nii.gz and slice_seg24.nii.gz (2-D, --2d). OASIS Data Use Agreement.
"""
import numpy as np
from _prepare_common import need, parser, read, save

p = parser(__doc__.splitlines()[0])
p.add_argument("--group-size", type=int, default=4)
p.add_argument("--2d", dest="two_d", action="store_true")
args = p.parse_args()
img_name, seg_name = ("slice_norm.nii.gz", "slice_seg24.nii.gz") if args.two_d else \
    ("aligned_norm.nii.gz", "aligned_seg35.nii.gz")
subjects = need(sorted(d for d in args.input.glob("OASIS_OAS1_*") if (d / img_name).exists()), img_name)
chunks = [subjects[i: i + args.group_size] for i in range(0, len(subjects), args.group_size)][: args.limit]
for k, chunk in enumerate(chunks):
    if len(chunk) < 2:
        break
    images, segs, aff = {}, [], None
    for d in chunk:
        images[d.name], aff = read(d / img_name)
        segs.append(read(d / seg_name, label=True)[0])
    save(args.output, f"oasis_group{k:03d}", images, aff, np.stack(segs), None, {"dataset": "neurite_oasis"},
         args.nifti)
