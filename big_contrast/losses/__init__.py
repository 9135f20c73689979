"""Pure contrastive losses: jnp in, scalar out; no Flax, no state."""
from big_contrast.losses.info_nce import contrastive
from big_contrast.losses.info_nce import info_nce
from big_contrast.losses.info_nce import nt_xent
from big_contrast.losses.swav import sinkhorn
from big_contrast.losses.swav import swav_loss
from big_contrast.losses.poly_view import poly_view_loss
from big_contrast.losses import multi_view  # registers mv_infonce, mv_dhel
from big_contrast.losses.clip import sigmoid_clip
from big_contrast.losses.clip import sigmoid_clip_ring
from big_contrast.losses.clip import softmax_clip
from big_contrast.losses.nnclr import nearest_neighbour
from big_contrast.losses.nnclr import nnclr_loss
