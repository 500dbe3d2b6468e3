"""Command-line entry points: one thin module per console script that parses arguments and calls
the library, nothing else.

May import: every part of the package; no part of the library imports it.
"""
