"""hiennu.ensembling: choosing among trained configurations and their ensembles by cross-validation
(``hiennu_find_best_configuration``, nnU-Net's ``nnUNetv2_find_best_configuration``).

- ``cv_probabilities``: a model's cross-validation probabilities (``fold_K/validation/CASE.npz``, kept by
  ``hiennu_train --npz``), collected and checked: folds, probabilities, same dataset, splits and checkpoint;
- ``ensemble_cv``: the candidates, the members' mean probability and the masks, the ensemble's folder;
- ``cv_scores``: every candidate and the ZADC rule scored on one case (challenge metrics), and the summaries;
- ``chosen_postprocessing``: the chosen candidate's post-processing (``hiennu.postprocessing``'s selection);
- ``inference_information``: ``inference_information.json``, the table and the ``hiennu_predict`` command;
- ``best_configuration``: the whole run, in order: check, score, choose, then write.

May import: the ground floor, ``evaluation`` (the metrics), ``postprocessing`` (the selection) and ``inference``
(the predictor's threshold). Never training, study or cli.
"""
