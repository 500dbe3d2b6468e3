"""Studies that run the whole pipeline: the loss study and the end-to-end demo.

This is the top floor: it may import every stage; no stage imports it.
"""
