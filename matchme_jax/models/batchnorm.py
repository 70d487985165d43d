"""BatchNorm with PyTorch's training semantics (``torch.nn.BatchNorm2d``), channels last.

Differences from ``flax.linen.BatchNorm`` that matter for parity with the official CATs training:

* ``momentum`` is PyTorch's: the weight of the NEW batch statistic (0.1), not of the old value;
* the running variance is updated with the UNBIASED batch variance (n / (n - 1)); the batch is
  normalised with the biased one, as in PyTorch;
* the batch variance is computed in two passes (mean of squared deviations), not as
  E[x^2] - E[x]^2.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp


class BatchNorm(nn.Module):
    """Batch normalisation over every axis but the last.

    Attributes:
        momentum: PyTorch momentum, ``running = (1 - momentum) * running + momentum * batch``.
        epsilon: added to the variance.
        dtype: output dtype; None keeps the input dtype. Statistics are at least float32.
    """

    momentum: float = 0.1
    epsilon: float = 1e-5
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x: jnp.ndarray, use_running_average: bool) -> jnp.ndarray:
        """Normalise ``x``.

        Args:
            x: [..., C].
            use_running_average: True normalises with the running statistics (eval, or the
                frozen-statistics mode); False with the batch statistics, and then the running
                statistics are updated (pass ``mutable=["batch_stats"]`` to ``apply``).

        Returns:
            [..., C] in ``dtype`` (or the input dtype).
        """
        features = x.shape[-1]
        stats_dtype = jnp.promote_types(x.dtype, jnp.float32)
        running_mean = self.variable(
            "batch_stats", "mean", lambda: jnp.zeros((features,), jnp.float32)
        )
        running_var = self.variable(
            "batch_stats", "var", lambda: jnp.ones((features,), jnp.float32)
        )
        scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)

        xs = x.astype(stats_dtype)
        if use_running_average:
            mean = running_mean.value.astype(stats_dtype)
            var = running_var.value.astype(stats_dtype)
        else:
            mean, var = self._batch_statistics(xs)
            if not self.is_initializing():
                self._update_running(running_mean, running_var, mean, var, x.size // features)
        inv_std = 1.0 / jnp.sqrt(var + self.epsilon)
        y = (xs - mean) * (inv_std * scale.astype(stats_dtype)) + bias.astype(stats_dtype)
        return y.astype(self.dtype or x.dtype)

    @staticmethod
    def _batch_statistics(xs: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        axes = tuple(range(xs.ndim - 1))
        mean = jnp.mean(xs, axis=axes)
        var = jnp.mean(jnp.square(xs - mean), axis=axes)
        return mean, var

    def _update_running(
        self,
        running_mean: nn.Variable,
        running_var: nn.Variable,
        mean: jnp.ndarray,
        var: jnp.ndarray,
        count: int,
    ) -> None:
        if count < 2:
            raise ValueError(
                f"BatchNorm {self.name}: training mode needs more than one value per channel "
                f"(got {count}); use a larger batch or image, or bn_mode='frozen'"
            )
        unbiased_var = var * (count / (count - 1))
        m = self.momentum
        running_mean.value = ((1 - m) * running_mean.value + m * mean).astype(
            running_mean.value.dtype
        )
        running_var.value = ((1 - m) * running_var.value + m * unbiased_var).astype(
            running_var.value.dtype
        )
