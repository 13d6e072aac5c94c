"""Hierarchy-aware auditing of image-classification datasets."""

__version__ = "0.1.0"
