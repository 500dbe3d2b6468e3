"""Moving arrays between a case's native grid and a planned grid, and back.

Owns ``resampling`` (to a fixed grid and back: trilinear images, nearest/linear/SDF masks,
probabilities to native) and ``cropping`` (brain box crop + target spacing, :class:`CropRecord`,
and its inverse). Planning measures these transforms (round-trip ceiling, brain boxes),
preprocessing applies them, inference undoes them.

May import: the ground floor only (today nothing of hiennu at all).
"""
