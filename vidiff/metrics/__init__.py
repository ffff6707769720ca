"""vidiff.metrics"""
