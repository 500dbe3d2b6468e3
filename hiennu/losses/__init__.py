"""hiennu.losses"""
