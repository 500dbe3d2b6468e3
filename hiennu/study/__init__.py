"""Studies that run the whole pipeline: the loss study and the end-to-end demo.

The top floor of the library: it may import every stage (and ``pipeline``); no stage imports it,
only ``cli``.
"""
