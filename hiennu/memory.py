"""How this process's C heap keeps freed memory: glibc's malloc thresholds for the network's large buffers."""

from __future__ import annotations

import ctypes
import platform
import sys

# glibc's mallopt parameters, and the values the prediction and training commands set (32 MiB: the largest mmap
# threshold glibc allows on 64 bits)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_BYTES, TRIM_THRESHOLD_BYTES = 32 << 20, 1 << 30


def keep_freed_memory() -> bool:
    """On Linux with glibc, fix malloc's mmap threshold at 32 MiB and its trim threshold at 1 GiB for this process
    (and the processes it forks); return whether it was done (False elsewhere: musl, macOS, Windows).

    Why: with glibc's adaptive thresholds every forward of the network on the CPU handed its large buffers back to
    the kernel and faulted them in again. Measured on 2 cores, 2026-12-07 (benchmarks.md): ``hiennu_predict`` of the
    default ``3d_fullres`` on the 37 BONBID dev cases 157.0 s -> 116.9 s (37.8 -> 0.6 million minor page faults, masks
    identical); the planned CPU ``3d_fullres`` training step in bf16 0.621 -> 0.526 s (median of 3 alternating runs), in
    float32 1.580 -> 1.559 s (no change); 50-100 MB more resident memory. Both must be set: either alone was slower
    (a helper's measurement).
    """
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
            libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
    except (OSError, AttributeError):
        return False
