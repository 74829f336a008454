"""Segmentation models: Xception + InceptionSE U-Net (the paper), smp's Xception U-Net, a plain U-Net."""
from nuclei.models.build import ARCHS, build_model
from nuclei.models.unet import count_params, encoder_frozen

__all__ = ["ARCHS", "build_model", "count_params", "encoder_frozen"]
