"""hiennu.networks"""
