"""Commands that chain several stages into one step: ``plan_and_preprocess`` (integrity check ->
fingerprint -> plans -> preprocessed cases, the library side of ``hiennu_plan_and_preprocess``) and
``default_model`` (``hiennu_train_default_model``: plan and preprocess, train every configuration of the
recipe on five folds, find the best configuration, export and install it).

May import: the ground floor, ``geometry``, ``datasets``, ``planning``, ``preprocessing``, and for the default
model ``inference``, ``training`` and ``ensembling``. Only ``study`` and ``cli`` import it.
"""
