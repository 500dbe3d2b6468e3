"""Ground floor: image read/write, geometry records, dataset.json, case discovery, atomic writes.

Imports no other hiennu stage.
"""
