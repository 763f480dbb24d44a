"""Brain tumor MRI classification: models, preprocessing and explanations shared by training and the app."""

from .braincancernet import BrainCancerNet
from .classifier import SUPPORTED_ARCHITECTURES, BrainTumorClassifier, WeightsMismatchError
from .preprocessing import normalize, preprocess, square_grayscale

__all__ = [
    "BrainCancerNet",
    "BrainTumorClassifier",
    "SUPPORTED_ARCHITECTURES",
    "WeightsMismatchError",
    "normalize",
    "preprocess",
    "square_grayscale",
]
__version__ = "0.1.0"
