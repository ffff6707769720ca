"""vidiff.io"""
