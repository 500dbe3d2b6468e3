"""hiennu.datasets"""
