"""Per-device memory of k-NN evaluation against a sharded feature bank, compiled, never run.

  python -m tools.knn_memory [--devices 8] [--train 1281167] [--dim 2048] [--batch 1024]

Compiles one test batch's k-NN (`evaluate.knn.knn_counts`) against a bank of `--train` rows
sharded over a mesh of fake CPU devices and prints XLA's memory analysis per device: the
bank's share (arguments) and the working memory (temporaries). Defaults: ImageNet-1k's
training split and ResNet-50's 2048-d features.
"""
import argparse
import os

import numpy as np


def bank_memory(train: int, dim: int, batch: int, k: int = 20, num_classes: int = 1000,
                dtype="float32") -> dict:
  """{"argument_bytes", "temp_bytes"} per device of knn_counts on a bank of `train` rows."""
  import jax
  import jax.numpy as jnp
  from big_contrast import sharding
  from big_contrast.evaluate import features
  from big_contrast.evaluate import knn
  mesh = sharding.make_mesh([("data", -1)])
  bank_sharding = features.bank_sharding(mesh)
  batches = -(-train // batch)
  spec = lambda shape, dt: jax.ShapeDtypeStruct(shape, dt, sharding=bank_sharding)
  args = (spec((batches, batch, dim), jnp.dtype(dtype)), spec((batches, batch), jnp.int32),
          spec((batches, batch), jnp.bool_), spec((1, batch, dim), jnp.dtype(dtype)),
          spec((1, batch), jnp.int32), spec((1, batch), jnp.bool_))
  compiled = knn.knn_counts.lower(*args, mesh=mesh, num_classes=num_classes, k=k,
                                  temperature=0.07).compile()
  analysis = compiled.memory_analysis()
  return {"devices": mesh.size, "train": train, "dim": dim, "batch": batch, "dtype": dtype,
          "argument_bytes": analysis.argument_size_in_bytes,
          "temp_bytes": analysis.temp_size_in_bytes}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--devices", type=int, default=8)
  parser.add_argument("--train", type=int, default=1_281_167)
  parser.add_argument("--dim", type=int, default=2048)
  parser.add_argument("--batch", type=int, default=1024, help="config.eval.batch_size")
  parser.add_argument("--dtype", default="float32")
  args = parser.parse_args()
  # Must be set before jax is imported.
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={args.devices}")
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  m = bank_memory(args.train, args.dim, args.batch, dtype=args.dtype)
  gib = lambda b: b / 2**30
  print(f"k-NN bank of {m['train']:,} x {m['dim']} {m['dtype']} on {m['devices']} devices, "
        f"test batch {m['batch']}: per device {gib(m['argument_bytes']):.2f} GiB of arguments "
        f"(the bank's share and a test batch), {gib(m['temp_bytes']):.3f} GiB of temporaries; "
        f"the whole bank is {gib(m['train'] * m['dim'] * np.dtype(args.dtype).itemsize):.2f} GiB.")


if __name__ == "__main__":
  main()
