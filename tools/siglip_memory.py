"""Per-device temporary memory of SigLIP's loss + gradient: full form vs chunked ring.

  python -m tools.siglip_memory [--devices 8] [--dim 768] [--batches 1024,4096,16384,32768]

Compiles value_and_grad of `losses.sigmoid_clip` (global logits, b×N per device) and
`losses.sigmoid_clip_ring` (b×b blocks) for batch-sharded [N, D] embeddings on a mesh of
fake CPU devices and prints XLA's compiled memory analysis (temp bytes per device).
Nothing is executed, so paper-size batches are fine on a laptop.
"""
import argparse
import os


def temp_bytes(loss_fn, n, d, mesh) -> int:
  """XLA's temp bytes per device of value_and_grad(loss_fn)(x, y, t, b), x and y [n, d]
  sharded over the mesh's batch axes; compiled, never run."""
  import jax
  import jax.numpy as jnp
  from big_contrast import sharding
  spec, rep = sharding.batch_sharding(mesh), sharding.replicated(mesh)
  grad = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1, 2, 3)),
                 in_shardings=(spec, spec, rep, rep))
  shapes = ([jax.ShapeDtypeStruct((n, d), jnp.float32)] * 2 +
            [jax.ShapeDtypeStruct((), jnp.float32)] * 2)
  return grad.lower(*shapes).compile().memory_analysis().temp_size_in_bytes


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--devices", type=int, default=8)
  parser.add_argument("--dim", type=int, default=768)
  parser.add_argument("--batches", default="1024,4096,16384,32768")
  args = parser.parse_args()
  # Must be set before jax is imported.
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={args.devices}")
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  from big_contrast import losses
  from big_contrast import sharding

  mesh = sharding.make_mesh((("data", args.devices),))
  temp_mib = lambda fn, n: temp_bytes(fn, n, args.dim, mesh) / 2**20

  print(f"{args.devices} devices, D={args.dim}, float32; temp MiB per device "
        "(b = N/devices; one b×b block = 4b² bytes)")
  print("| global batch N | per-device b | b×b block | full (b×N logits) | ring | full/ring |")
  print("|---|---|---|---|---|---|")
  for n in (int(x) for x in args.batches.split(",")):
    b = n // args.devices
    full = temp_mib(losses.sigmoid_clip, n)
    ring = temp_mib(lambda *a: losses.sigmoid_clip_ring(*a, mesh), n)
    print(f"| {n} | {b} | {4 * b * b / 2**20:.1f} | {full:.1f} | {ring:.1f} | "
          f"{full / ring:.1f}x |")


if __name__ == "__main__":
  main()
