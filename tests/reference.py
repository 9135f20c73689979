"""Plain numpy references shared by the loss tests, written from the papers' equations."""
import numpy as np


def normalize(x):
  x = np.asarray(x, np.float64)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def nt_xent(z1, z2, t):
  """SimCLR eq. 1 with explicit loops: anchor i of 2N, -log exp(s_ip/τ) / Σ_{k≠i} exp(s_ik/τ)."""
  z = normalize(np.concatenate([z1, z2]))
  n2 = len(z)
  total = 0.0
  for i in range(n2):
    p = (i + n2 // 2) % n2
    denom = sum(np.exp(z[i] @ z[k] / t) for k in range(n2) if k != i)
    total += -np.log(np.exp(z[i] @ z[p] / t) / denom)
  return total / n2


def numeric_grad(f, x, eps=1e-5):
  """Central finite differences of a scalar function of a float64 array."""
  g = np.zeros_like(x)
  for idx in np.ndindex(x.shape):
    d = np.zeros_like(x)
    d[idx] = eps
    g[idx] = (f(x + d) - f(x - d)) / (2 * eps)
  return g
