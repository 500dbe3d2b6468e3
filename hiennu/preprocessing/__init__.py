"""hiennu.preprocessing"""
