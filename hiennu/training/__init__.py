"""Training: the loop (``trainer``), one trainer per loss (``trainers``), the data loader and
augmentations (``data``, ``augmentation``, ``gpu_augmentation``), checkpoints, progress, the fold
lock and data-parallel helpers, and the launcher (``launch``). The device policy is the ground
floor's ``hiennu.device``.

May import: the ground floor, ``networks``, ``losses``, ``inference`` (final validation in native
geometry, sliding window) and ``evaluation`` (validation scores). Nothing below imports it but
``study`` and ``cli``.
"""
