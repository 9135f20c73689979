"""Evaluators, registered by name: k-NN and linear probe of frozen features; zero-shot and
retrieval of image-text models. A new one is a function with `@base.evaluator(name)` in a
module imported here."""
from big_contrast.evaluate import classifier
from big_contrast.evaluate.base import EVALUATORS
from big_contrast.evaluate.base import Context
from big_contrast.evaluate.base import check
from big_contrast.evaluate.base import eval_settings
from big_contrast.evaluate.base import evaluate
from big_contrast.evaluate.features import Bank
from big_contrast.evaluate.features import bank_sharding
from big_contrast.evaluate.knn import knn_bank_accuracy
from big_contrast.evaluate.image_text import PromptSource
from big_contrast.evaluate.image_text import retrieval_recall
from big_contrast.evaluate.image_text import zero_shot_accuracy
from big_contrast.evaluate.image_text import zero_shot_classifier
from big_contrast.evaluate.knn import knn_accuracy
from big_contrast.evaluate.linear_probe import linear_probe_accuracy
