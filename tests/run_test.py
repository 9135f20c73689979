"""run.setup: the one setup of the loop and the tools; registries; the train-state layout."""
import json
import os

import jax
import numpy as np
import pytest

from big_contrast import evaluate
from big_contrast import methods
from big_contrast import registry
from big_contrast import run as run_lib
from conftest import tiny_config

DATA = os.path.join(os.path.dirname(__file__), "data")


def test_train_state_layout_of_every_digits_recipe_is_unchanged():
  """Paths, shapes and dtypes of each digits recipe's (tiny) train state, recorded with the
  code before settings were declared per module: its checkpoints must still restore. (SwAV's
  optimizer state was recorded again when its prototypes got their own, which starts when
  they unfreeze.)"""
  with open(os.path.join(DATA, "train_state_layouts.json")) as f:
    recorded = json.load(f)
  for recipe, layout in recorded.items():
    c = tiny_config(recipe, **({"init_from.workdir": ""} if recipe == "lit_digits" else {}))
    # Recorded at the recipes' ResNet-18.
    if c.model.name == "resnet":
      c.model.depth = 18
    elif c.model.name == "two_tower" and c.model.image.name == "resnet":
      c.model.image.depth = 18
    abstract = run_lib.setup(c, train_size=1200).abstract
    now = {jax.tree_util.keystr(p): [list(x.shape), str(x.dtype)]
           for p, x in jax.tree_util.tree_leaves_with_path(abstract)}
    assert now == layout, recipe


def test_setup_builds_on_the_devices_it_is_given_and_the_ring_uses_that_mesh():
  """SigLIP's ring is laid out over the run's mesh: on devices 4-7 the step runs there and
  gives the full loss's value; a mesh built from jax.devices() inside the loss would not."""
  devices = jax.devices()[4:]
  losses = {}
  for impl in ("ring", "full"):
    c = tiny_config("siglip_digits", batch_size=16, **{"loss.impl": impl})
    run = run_lib.setup(c, devices=devices)
    assert list(run.mesh.devices.flat) == devices
    ts = run.init_state()
    batch = next(run.train_batches().iterate(0))
    ts, metrics = run.train_step(ts, run.global_batch(batch))
    assert {d for x in jax.tree.leaves(ts) for d in x.devices()} == set(devices)
    losses[impl] = float(metrics["loss"])
  np.testing.assert_allclose(losses["ring"], losses["full"], rtol=1e-5)


def test_setup_without_data_needs_no_dataset():
  c = tiny_config(**{"data.name": "tfds", "data.tfds_name": "not_prepared_anywhere"})
  run = run_lib.setup(c, train_size=1600)
  assert run.sources is None and run.schedule.steps_per_epoch == 100
  with pytest.raises(ValueError, match="set config.data.tfds_name"):
    run_lib.setup(tiny_config(**{"data.name": "tfds"}))


def test_registries_name_the_key_the_choices_and_the_nearest():
  table = registry.Registry("thing", "config.thing")
  table.register("alpha", 1)
  assert table.get("alpha") == 1 and "alpha" in table and len(table) == 1
  with pytest.raises(ValueError, match=r"config.thing='alpah' is not a known thing \(did you "
                                       r"mean 'alpha'\?\); choose one of \['alpha'\]"):
    table.get("alpah")
  with pytest.raises(ValueError, match="registered twice"):
    table.register("alpha", 2)
  assert methods.METHODS.names() == ["clip", "moco", "nnclr", "poly_view", "siglip", "simclr",
                                     "swav"]
  assert evaluate.EVALUATORS.names() == ["finetune", "knn", "linear_eval", "linear_probe",
                                         "retrieval", "zero_shot"]


def test_a_method_declares_its_data_and_export():
  kinds = {name: (cls.data, cls.export) for name, cls in methods.METHODS.items()}
  assert kinds["clip"] == kinds["siglip"] == ("image-text", "two_tower")
  assert all(kinds[m] == ("image", "encoder")
             for m in ("simclr", "moco", "swav", "poly_view", "nnclr"))


def test_a_run_shorter_than_its_warmup_is_warned_about(caplog):
  import logging
  with caplog.at_level(logging.WARNING, logger="absl"):
    run_lib.setup(tiny_config(total_steps=4, **{"optimizer.warmup_epochs": 2.0}),
                  train_size=1200)
  assert "config.optimizer.warmup_epochs=2 is" in caplog.text
  assert "and the run has 4: the learning rate warms up over the whole run" in caplog.text
