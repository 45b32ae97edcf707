"""The convolutional VAE on MNIST of the deep weight prior's Figure 4 (right), Appendix E.

*The Deep Weight Prior* (Atanov et al., 2019), Table 2: encoder conv 7x7 (1 -> 64, stride 2),
conv 5x5 (64 -> 128), two linear heads to ``z``; decoder transposed convs 5x5 (128), (64,
stride 2) and (1, stride 2). The text gives no paddings, so this module picks those that map
28x28 to 7x7 and back: the encoder's second convolution also has stride 2 (28 -> 14 -> 7) and
a linear layer maps ``z`` to the decoder's ``128 x 7 x 7`` input (7 -> 7 -> 14 -> 28); ELU
between layers. With ``z_dim=16`` it has 1.13 M parameters (the paper: 1.64 M). Its conv
layers ``conv1`` (7x7) and ``conv2`` (5x5) have the kernel sizes of the MNIST ConvNet's, so the
same kernel priors and kernel sets initialise them (:mod:`pyro_dwp.init`).

Pixels are Bernoulli given ``z`` (images binarised at 0.5); ``q(z | x)`` is a diagonal Gaussian,
``p(z) = N(0, I)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MNISTConvVAE"]


class MNISTConvVAE(nn.Module):
    """A convolutional VAE for binarised ``(B, 1, 28, 28)`` images.

    Parameters: ``conv1.weight`` ``(64, 1, 7, 7)``, ``conv2.weight`` ``(128, 64, 5, 5)``,
    ``loc`` / ``scale`` ``Linear(128 * 7 * 7, z_dim)``, ``fc`` ``Linear(z_dim, 128 * 7 * 7)``,
    ``deconv1`` ``(128, 128, 5, 5)``, ``deconv2`` ``(128, 64, 5, 5)``, ``deconv3``
    ``(64, 1, 5, 5)`` (transposed convolutions, weights ``(in, out, k, k)``), and biases.

    Args:
        z_dim: Dimension of the latent code (>= 1).
    """

    def __init__(self, z_dim: int = 16) -> None:
        super().__init__()
        if z_dim < 1:
            raise ValueError(f"z_dim must be >= 1, got {z_dim}")
        self.z_dim = z_dim
        self.conv1 = nn.Conv2d(1, 64, 7, stride=2, padding=3)  # 28 -> 14
        self.conv2 = nn.Conv2d(64, 128, 5, stride=2, padding=2)  # 14 -> 7
        self.loc = nn.Linear(128 * 7 * 7, z_dim)
        self.scale = nn.Linear(128 * 7 * 7, z_dim)
        self.fc = nn.Linear(z_dim, 128 * 7 * 7)
        self.deconv1 = nn.ConvTranspose2d(128, 128, 5, padding=2)  # 7 -> 7
        self.deconv2 = nn.ConvTranspose2d(128, 64, 5, stride=2, padding=2, output_padding=1)
        self.deconv3 = nn.ConvTranspose2d(64, 1, 5, stride=2, padding=2, output_padding=1)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``q(z | x)``: loc and scale ``(B, z_dim)`` of images ``(B, 1, 28, 28)``."""
        if x.dim() != 4 or tuple(x.shape[1:]) != (1, 28, 28):
            raise ValueError(f"MNISTConvVAE expects images (B, 1, 28, 28), got {tuple(x.shape)}")
        h = F.elu(self.conv2(F.elu(self.conv1(x)))).flatten(1)
        return self.loc(h), F.softplus(self.scale(h)) + 1e-5

    def decode(self, z: Tensor) -> Tensor:
        """Bernoulli logits ``(B, 1, 28, 28)`` of the pixels given codes ``z`` ``(B, z_dim)``."""
        h = F.elu(self.fc(z)).view(-1, 128, 7, 7)
        h = F.elu(self.deconv2(F.elu(self.deconv1(h))))
        return self.deconv3(h)

    def elbo(self, x: Tensor) -> Tensor:
        """Per-image ELBO ``(B,)`` in nats of binary images ``x`` ``(B, 1, 28, 28)``.

        One reparameterised draw ``z ~ q(z | x)`` for the reconstruction term,
        ``sum_pixels log Bernoulli(x | decode(z))``, minus ``KL(q(z | x) || N(0, I))`` in
        closed form.
        """
        loc, scale = self.encode(x)
        z = loc + scale * torch.randn_like(loc)
        log_lik = -F.binary_cross_entropy_with_logits(self.decode(z), x, reduction="none")
        kl = 0.5 * (loc**2 + scale**2 - 1.0).sum(-1) - scale.log().sum(-1)
        return log_lik.flatten(1).sum(-1) - kl
