"""Evaluators of frozen features: k-NN and linear probe."""
from big_contrast.evaluate.features import extract
from big_contrast.evaluate.knn import knn_accuracy
from big_contrast.evaluate.linear_probe import linear_probe_accuracy
