"""Host-side input: data sources and grain pipelines of uint8 image batches."""

from input_pipeline.pipeline import eval_batches, train_batches
from input_pipeline.sources import get_sources

__all__ = ["eval_batches", "get_sources", "train_batches"]
