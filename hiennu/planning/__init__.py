"""Planning: the dataset fingerprint (``fingerprint``), the planner that turns it into plans
(``planner``, with ``spacing``, ``topology``, ``grid``, ``memory``), the round-trip ceiling of a
grid (``roundtrip``), the refinement of ``3d_fullres``'s spacing that heeds it (``spacing_refinement``)
and the cross-validation folds (``splits``). The plans themselves are the
ground floor's ``hiennu.plans``.

May import: the ground floor and ``geometry`` (the transforms it measures). Not preprocessing
(``pipeline`` chains the two), not networks (the memory estimate is a formula).
"""
