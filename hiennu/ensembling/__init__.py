"""hiennu.ensembling: choosing among trained configurations and their ensembles by cross-validation
(``hiennu_find_best_configuration``, nnU-Net's ``nnUNetv2_find_best_configuration``).

- ``cv_probabilities``: a model's cross-validation probabilities (``fold_K/validation/CASE.npz``, kept by
  ``hiennu_train --npz``), collected and checked: folds, probabilities, same dataset, splits and checkpoint;
- ``ensemble_cv``: the candidates, the members' mean probability and the masks, the ensemble's folder;
- ``cv_scores``: every candidate and the ZADC rule scored on one case (challenge metrics), and the summaries;
- ``candidate_postprocessing``: every candidate's post-processing chosen on its CV masks, and the rule's on its
  masks (``hiennu.postprocessing``'s selection), where each record goes, and its pooled and nested scores;
- ``choice``: which candidate ships (the nested Dice with post-processing by default; nnU-Net's raw Dice with
  ``--select-by raw``), and why the default differs from nnU-Net;
- ``rule_comparison``: the chosen one + its nested post-processing against the rule + its own, paired;
- ``nested_choice``: the whole choice (post-processing and candidate) made without each fold and applied to it, the
  estimate of the choice that no choice on the same cases flatters (``--nested-choice``);
- ``inference_information``: ``inference_information.json`` and the ``hiennu_predict`` command;
- ``table``: the table the command prints;
- ``best_configuration``: the whole run, in order: check, score, choose post-processing, choose, then write.

May import: the ground floor, ``evaluation`` (the metrics), ``postprocessing`` (the selection) and ``inference``
(the predictor's threshold). Never training, study or cli.
"""
