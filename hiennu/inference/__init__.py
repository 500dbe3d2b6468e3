"""hiennu.inference"""
