"""Labelled data for certify(): .npz, .npy pairs, IDX (MNIST format), folders of images by class."""

from speccert.data.dataset import Dataset, fit_to_model, make_dataset
from speccert.data.loaders import SPLITS, load_data

__all__ = ["SPLITS", "Dataset", "fit_to_model", "load_data", "make_dataset"]
