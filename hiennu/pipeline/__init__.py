"""Commands that chain several stages into one step: ``plan_and_preprocess`` (integrity check ->
fingerprint -> plans -> preprocessed cases, the library side of ``hiennu_plan_and_preprocess``).

May import: the ground floor, ``geometry``, ``datasets``, ``planning``, ``preprocessing``. Only
``study`` and ``cli`` import it.
"""
