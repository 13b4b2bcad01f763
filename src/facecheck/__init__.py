"""facecheck: detect edited and generated face images, with a human in the loop."""

__version__ = "0.1.0"

__all__ = ["__version__"]
