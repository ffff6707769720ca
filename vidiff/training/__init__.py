"""vidiff.training: the training loop, objectives, EMA, checkpoints, stages and data.

Submodules are imported explicitly (``from vidiff.training.data import VideoFolderDataset``); importing
this package loads nothing heavy.
"""
