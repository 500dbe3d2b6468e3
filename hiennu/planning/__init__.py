"""hiennu.planning"""
