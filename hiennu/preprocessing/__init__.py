"""Preprocessing: a native case -> the normalized array a network reads, on the plans' grid
(``preprocessor``: ``preprocess_case`` shared with inference, ``preprocess_dataset`` for a raw
dataset; ``normalization``: the per-channel schemes).

May import: the ground floor (plans are ``hiennu.plans``) and ``geometry``. Not planning.
"""
