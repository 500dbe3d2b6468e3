"""hiennu.training"""
