"""Raw datasets: the BONBID converter (bonbid.py), the synthetic default dataset (synthetic.py), the
integrity check (integrity.py) and the stage-then-rename folder writer they share (staging.py).

Imports only the ground floor (io/, paths.py, errors, log).
"""
