"""vidiff.cli"""
