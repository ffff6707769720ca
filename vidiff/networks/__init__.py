"""vidiff.networks"""
