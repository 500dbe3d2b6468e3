"""Networks: the 3D U-Net built from a plans' ``NetworkPlan`` (``unet``). Pure tensor code.

May import: the ground floor only (``hiennu.plans``).
"""
