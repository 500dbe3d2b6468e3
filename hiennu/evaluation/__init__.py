"""Evaluation: the BONBID-HIE metrics per case (``metrics``, ``surface``), folder scoring (``evaluate``)
and comparison tables and figures (``report``).

Imports no training or inference code.
"""
