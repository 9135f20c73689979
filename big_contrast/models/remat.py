"""Rematerialisation (gradient checkpointing) of the repeated blocks: `config.model.remat`."""
import flax.linen as nn
import jax


def _convs_saveable(prim, *_, **__):
  return prim is jax.lax.conv_general_dilated_p


# name -> what the backward pass keeps of a block's forward pass; the rest is recomputed.
POLICIES = {
    "none": None,                                        # Everything (no remat).
    "full": jax.checkpoint_policies.nothing_saveable,    # Only the block's input.
    # Matmul and conv outputs, but not the batched attention logits / weights [B, H, L, L]
    # nor elementwise results (norms, activations). dots_with_no_batch_dims_saveable alone
    # matches dot_general only: ResNet blocks, all convs, would be recomputed in full.
    "dots": jax.checkpoint_policies.save_from_both_policies(
        jax.checkpoint_policies.dots_with_no_batch_dims_saveable, _convs_saveable),
}


def check(name: str) -> str:
  if name not in POLICIES:
    raise ValueError(f"config.model.remat={name!r} is unknown; choose from {tuple(POLICIES)}.")
  return name


def wrap(block: type[nn.Module], name: str) -> type[nn.Module]:
  """`block`, rematerialised under POLICIES[name] unless it is "none".

  Parameter paths stay those of the unwrapped block as long as instances get an
  explicit `name=` (the wrapper's class name differs), which every caller does.
  """
  if check(name) == "none":
    return block
  return nn.remat(block, policy=POLICIES[name])
