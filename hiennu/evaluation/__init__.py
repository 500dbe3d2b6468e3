"""Evaluation: the BONBID-HIE metrics per case (``metrics``, ``surface``), folder scoring (``evaluate``),
comparison tables and figures (``report``) and the cross-validated choice of post-processing
(``postprocessing_selection``). Dice and the lesion volume bands are the ground floor's
``hiennu.masks``.

May import: the ground floor, and ``inference`` for the post-processing candidates it scores
(``inference.postprocessing``). Never training.
"""
