"""The README's example: pair losses on a batch of pairs, jit-compiled and vmapped."""

import jax
import jax.numpy as jnp

from metriclearn import losses

key1, key2 = jax.random.split(jax.random.key(0))
x1 = jax.random.normal(key1, (8, 16))
x2 = x1 + 0.1 * jax.random.normal(key2, (8, 16))
similar = jnp.arange(8) % 2 == 0  # True: the two items are of the same kind

batch_loss = jax.jit(
  jax.vmap(lambda a, b, s: losses.contrastive_loss(a, b, s, margin=1.0))
)
print("contrastive per pair:", batch_loss(x1, x2, similar))

# Hadsell et al. 2006 exactly (with the 1/2 factors), as a named set of options.
hadsell = losses.CONTRASTIVE_VARIANTS["hadsell2006"]
print(
  "Hadsell 2006 mean:",
  jax.vmap(lambda a, b, s: losses.contrastive_loss(a, b, s, **hadsell))(
    x1, x2, similar
  ).mean(),
)

# Log-likelihood alternative: learned scale and bias, gradients for all of them.
grads = jax.grad(
  lambda scale, bias: jax.vmap(losses.sigmoid_pair_loss, (0, 0, 0, None, None))(
    x1, x2, similar, scale, bias
  ).mean(),
  argnums=(0, 1),
)(1.0, 2.0)
print("d loss / d (scale, bias):", grads)
