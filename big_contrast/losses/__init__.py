"""Pure contrastive losses: jnp in, scalar out; no Flax, no state."""
from big_contrast.losses.nt_xent import nt_xent
