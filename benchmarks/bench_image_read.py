"""Time hiennu's image read (``hiennu.io.image.read_image``: header checks, the checksum of compressed voxel data,
then SimpleITK) side by side with SimpleITK's own read, in one run, on compressed copies of real images.

Why: SimpleITK does not verify the checksum of a ``.nii.gz`` (CRC-32) or of a compressed MetaImage (Adler-32), so
hiennu inflates the stream once more (:func:`hiennu.io.image.compressed_data_problem`); this measures what that
costs a read. Prints per ending: files, mean compressed size, milliseconds a file for SimpleITK, the checksum pass
and ``read_image``, and the ratio ``read_image`` / SimpleITK (median of ``--repeats`` passes over all files).

    python benchmarks/bench_image_read.py --images $hiennu_raw/Dataset001_BONBID/imagesTr --pattern '*_0000.mha'
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from hiennu.io.image import compressed_data_problem, read_image


def per_file_ms(fn, paths: list[Path], repeats: int) -> float:
    """Median over ``repeats`` passes of the mean milliseconds ``fn`` takes a file."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for p in paths:
            fn(p)
        times.append((time.perf_counter() - t0) / len(paths))
    return float(np.median(times)) * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=Path, required=True, help="folder of images to copy compressed")
    p.add_argument("--pattern", default="*.mha", help="which files of --images (glob)")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    sources = sorted(args.images.glob(args.pattern))
    if not sources:
        raise SystemExit(f"no {args.pattern} in {args.images}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; {len(sources)} files of "
          f"{args.images}, written compressed; median of {args.repeats} passes")
    with tempfile.TemporaryDirectory() as tmp:
        for ending in (".mha", ".nii.gz"):
            paths = []
            for src in sources:
                out = Path(tmp) / (src.name.split(".")[0] + ending)
                sitk.WriteImage(sitk.ReadImage(str(src)), str(out), True)
                paths.append(out)
            size = np.mean([p.stat().st_size for p in paths]) / 1e6
            own = per_file_ms(lambda q: sitk.ReadImage(str(q)), paths, args.repeats)
            check = per_file_ms(compressed_data_problem, paths, args.repeats)
            full = per_file_ms(read_image, paths, args.repeats)
            print(f"{ending:7s} {len(paths)} files, {size:.2f} MB each: SimpleITK {own:.1f} ms, checksum pass "
                  f"{check:.1f} ms, read_image {full:.1f} ms; read_image / SimpleITK {full / own:.2f}x")


if __name__ == "__main__":
    main()
