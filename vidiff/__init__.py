"""vidiff: video diffusion in PyTorch (SVD-compatible image-to-video, training, fast inference)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("vidiff")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+local"

__all__ = ["__version__"]
