"""vidiff.conditioning"""
