"""Image classification datasets prepared by tensorflow-datasets (array_record).

`tfds.data_source` gives random access to array_record files without
TensorFlow. It parses records with its own protos; `tfds.features.Image` is
decoded by OpenCV or, failing that, Pillow, so real image datasets need one of
them (Pillow is a dependency). Preparing a dataset
is a separate step that does need TensorFlow to encode images:
`tfds build NAME --file_format=array_record`.
"""

import numpy as np
import tensorflow_datasets as tfds

from input_pipeline import records
from input_pipeline import resize


class TfdsSource:
  """Random-access source: i -> dict(image=uint8 [S, S, 3], label=int32).

  Every image is brought to one fixed size here (short-side resize + centre
  crop) so that batches stack; random crops happen on the device. A record
  that cannot be read or decoded is replaced (records.Replacer).
  """

  def __init__(self, name: str, split: str, image_size: int,
               data_dir: str | None = None):
    # download=False: a missing dataset fails at once instead of trying
    # (and, offline, hanging on) a download.
    self._records = tfds.data_source(
        name, split=split, data_dir=data_dir, download=False)
    label = self._records.dataset_info.features["label"]
    self.num_classes = label.num_classes
    self.class_names = tuple(label.names)
    self.image_size = image_size
    self.name, self.split = name, split
    self._replacer = records.Replacer(
        len(self._records), fix=f"build {name} again with tfds build")

  def __len__(self) -> int:
    return len(self._records)

  def _example(self, index: int) -> dict[str, np.ndarray]:
    with records.bad_record(f"{self.name} {self.split}[{index}]"):
      record = self._records[index]
      return {
          "image": resize.center_square_resize(record["image"], self.image_size),
          "label": np.int32(record["label"]),
      }

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    example, replaced = self._replacer.first_usable(index, self._example)
    return {**example, records.REPLACED: np.str_(replaced)}
