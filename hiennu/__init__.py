"""hiennu: self-configuring segmentation of HIE lesions in neonatal diffusion MRI (ADC + ZADC)."""

__version__ = "0.1.0"
