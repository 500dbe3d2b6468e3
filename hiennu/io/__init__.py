"""Ground floor: image read/write (SimpleITK) and geometry records (``image``), atomic writes
(``atomic``), ``dataset.json`` (``dataset_json``), the nnU-Net file layout of a raw dataset (channel
file names and case discovery, ``cases``) and the official BONBID file and folder names
(``bonbid_names``).

May import: the rest of the ground floor (``errors``, ``log``); no stage.
"""
