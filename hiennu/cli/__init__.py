"""hiennu.cli"""
