"""Raw datasets: the BONBID converter (bonbid.py), the synthetic default dataset (synthetic.py), the
integrity check (integrity.py) and the stage-then-rename folder writer they share (staging.py).

May import: the ground floor only (``io/``, ``paths``, ``errors``, ``log`` ...).
"""
