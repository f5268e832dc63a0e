#!/usr/bin/env python
"""Fetch and verify registered datasets: ``python data_scripts/fetch_data.py [--list] [NAME ...]``.

Without names every dataset is fetched. Files come from the mirror ``$XREG_EDU_MIRROR`` when it has them, else
they are downloaded from their pinned public URLs; each file's sha256 is checked. Exit status 1 on any failure.
"""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from tqdm import tqdm

    from xreg_edu.datasets import DatasetError, data_dir, fetch_file, mirror_dir
    from xreg_edu.datasets.registry import dataset_names, get_spec

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="dataset names (default: all)")
    parser.add_argument("--list", action="store_true", help="print the datasets with sizes and licences, then exit")
    parser.add_argument("--force", action="store_true", help="re-copy / re-download files already in the cache")
    args = parser.parse_args(argv)
    try:
        names = args.names or dataset_names()
        specs = [get_spec(n) for n in names]
        if args.list:
            for s in specs:
                print(f"{s.name:16s} {len(s.files):4d} files {s.size / 1e6:7.2f} MB  {s.licence.split('. ')[0]}")
            return 0
        files = [(s.name, rf) for s in specs for rf in s.files]
        print(f"cache: {data_dir()}  mirror: {mirror_dir() or '(none; set XREG_EDU_MIRROR)'}", file=sys.stderr)
        for name, rf in tqdm(files, desc="fetching", unit="file"):
            fetch_file(rf, force=args.force)
    except DatasetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"ok: {len(files)} files of {len(specs)} dataset(s) verified", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
