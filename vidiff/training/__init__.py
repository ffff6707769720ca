"""vidiff.training"""
