"""hiennu.evaluation"""
