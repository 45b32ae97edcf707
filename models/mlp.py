"""Multi-layer perceptrons of Blundell et al. (2015): curve regression and MNIST."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

__all__ = ["mlp"]


def mlp(
    in_features: int,
    hidden: Sequence[int],
    out_features: int,
    *,
    activation: type[nn.Module] = nn.ReLU,
    dropout: float = 0.0,
) -> nn.Sequential:
    """A fully connected network ``(B, in_features) -> (B, out_features)``.

    Parameters are named ``"0.weight"``, ``"0.bias"``, ``"2.weight"``... (``nn.Sequential``
    indices; with dropout each hidden layer takes three slots).

    Args:
        in_features: Input size.
        hidden: Sizes of the hidden layers, e.g. ``(1200, 1200)``.
        out_features: Output size.
        activation: Activation module class.
        dropout: Dropout probability after each hidden activation (baselines only), in [0, 1).
    """
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if in_features < 1 or out_features < 1 or any(h < 1 for h in hidden):
        raise ValueError(
            f"layer sizes must be positive, got {in_features}, {hidden}, {out_features}"
        )
    layers: list[nn.Module] = []
    sizes = [in_features, *hidden]
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(a, b), activation()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(sizes[-1], out_features))
    return nn.Sequential(*layers)
