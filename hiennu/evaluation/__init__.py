"""Evaluation: the BONBID-HIE metrics per case (``metrics``, ``surface``), folder scoring (``evaluate``),
comparison tables and figures (``report``). Dice, the lesion volume bands and the connectivity are the
ground floor's ``hiennu.masks``.

Scores only: may import the ground floor, nothing else (the choice of post-processing, which scores
candidates, is ``hiennu.postprocessing``).
"""
