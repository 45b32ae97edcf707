"""The convolutional network of the deep weight prior's MNIST / notMNIST experiments.

Layout of *The Deep Weight Prior* (Atanov et al., 2019), Section 4: conv 7x7 (1 -> c1),
LeakyReLU, max-pool 2, conv 5x5 (c1 -> c2), LeakyReLU, max-pool 2, flatten (c2 x 3 x 3),
linear -> 10. The paper's target network has ``channels=(32, 128)``; the source networks whose
kernels train the prior share the layout (the public code uses wider ones).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DWPConvNet", "conv_layers"]


class DWPConvNet(nn.Module):
    """The paper's ConvNet, ``(B, 1, 28, 28) -> (B, num_classes)`` logits.

    A plain :class:`torch.nn.Module` (made Bayesian with ``BNN``); its parameters are named
    ``conv1.weight`` ``(c1, 1, 7, 7)``, ``conv1.bias`` ``(c1,)``, ``conv2.weight``
    ``(c2, c1, 5, 5)``, ``conv2.bias`` ``(c2,)``, ``fc.weight`` ``(num_classes, 9 * c2)`` and
    ``fc.bias`` ``(num_classes,)``.

    Args:
        channels: Output channels ``(c1, c2)`` of the two convolutions.
        num_classes: Number of output logits.
        negative_slope: Slope of the LeakyReLU for negative inputs.
    """

    def __init__(
        self,
        channels: tuple[int, int] = (32, 128),
        num_classes: int = 10,
        negative_slope: float = 0.01,
    ) -> None:
        super().__init__()
        c1, c2 = channels
        if c1 < 1 or c2 < 1 or num_classes < 1:
            raise ValueError(
                f"channels and num_classes must be >= 1, got channels={tuple(channels)}, "
                f"num_classes={num_classes}"
            )
        self.channels, self.negative_slope = (c1, c2), negative_slope
        self.conv1 = nn.Conv2d(1, c1, 7)  # 28 -> 22, pooled to 11
        self.conv2 = nn.Conv2d(c1, c2, 5)  # 11 -> 7, pooled to 3
        self.fc = nn.Linear(c2 * 3 * 3, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, num_classes)`` of images ``(B, 1, 28, 28)``."""
        if x.dim() != 4 or tuple(x.shape[1:]) != (1, 28, 28):
            raise ValueError(f"DWPConvNet expects images (B, 1, 28, 28), got {tuple(x.shape)}")
        h = F.max_pool2d(F.leaky_relu(self.conv1(x), self.negative_slope), 2)
        h = F.max_pool2d(F.leaky_relu(self.conv2(h), self.negative_slope), 2)
        return self.fc(h.flatten(1))


def conv_layers(net: nn.Module) -> dict[str, int]:
    """The square 2-D convolutions of ``net``: ``{module name: kernel side k}``, in order.

    For :class:`DWPConvNet` this is ``{"conv1": 7, "conv2": 5}``; the weight of layer ``name``
    is ``net.get_submodule(name).weight`` of shape ``(out, in, k, k)``.
    """
    return {
        name: module.kernel_size[0]
        for name, module in net.named_modules()
        if isinstance(module, nn.Conv2d) and module.kernel_size[0] == module.kernel_size[1]
    }
