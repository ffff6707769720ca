"""vidiff.autoencoders"""
