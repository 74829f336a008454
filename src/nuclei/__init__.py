"""Nuclei instance segmentation for the 2018 Data Science Bowl (Xception-InceptionSE U-Net)."""

__version__ = "0.1.0"
