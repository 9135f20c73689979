"""Evaluators: k-NN and linear probe of frozen features; zero-shot and retrieval."""
from big_contrast.evaluate.features import extract
from big_contrast.evaluate.image_text import PromptSource
from big_contrast.evaluate.image_text import retrieval_recall
from big_contrast.evaluate.image_text import zero_shot_accuracy
from big_contrast.evaluate.image_text import zero_shot_classifier
from big_contrast.evaluate.knn import knn_accuracy
from big_contrast.evaluate.linear_probe import linear_probe_accuracy
