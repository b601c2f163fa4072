"""Encoder-decoder with an amplitude and a phase output (DESIGN section 7).

The input is a diffraction pattern (reciprocal space) and the output an object patch (real
space): every output pixel depends on the whole pattern. The encoder therefore pools three times
(N -> N/8, receptive field about the whole pattern) and the decoder rebuilds the object without
same-resolution skip connections, which would join unrelated pixels of the two domains. The
decoder stops at the predicted support: N/2 x N/2 for the default central support, N for full.

Two decoder layouts (measured in docs/quality.md): ``upsample`` (nearest-neighbour or bilinear
upsampling, two convolutions per level except one at the finest, about half the cost) and
``transposed`` (the first design: a transposed convolution and two convolutions per level).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn

from ..config import BilinearUpsampling, GroupNorm

# Where group normalisation goes: nowhere, the phase decoder's blocks only, or every block (the
# config's choices; a bundle's hyperparameters carry them as plain strings).
GROUP_NORMS = tuple(str(g) for g in GroupNorm)
BILINEAR_UPSAMPLINGS = tuple(str(b) for b in BilinearUpsampling)
NORM_GROUPS = 8


@dataclass(frozen=True)
class NetworkSpec:
    """The network's architecture, under the names a model's hyperparameters (and so its checkpoints
    and bundles) give it. The one list of those names: a model rebuilds its network from its
    hyperparameters through ``from_hparams``, so a new architecture choice is added here, in the
    config and in the models' signatures, and nowhere between."""

    base_filters: tuple[int, ...] = (32, 64, 128)
    width: int = 1
    object_support: str = "center"  # "center": the N/2 x N/2 central prediction; "full": N x N
    decoder: str = "upsample"
    separate_decoders: bool = False
    decoder_width: float = 1.0
    group_norm: str = "none"
    bilinear_upsampling: str = "none"
    per_pattern: bool = False
    init: str = "glorot"

    @classmethod
    def from_hparams(cls, hparams: Mapping[str, Any]) -> NetworkSpec:
        """The architecture a model's hyperparameters name; a key a model does not take (the
        supervised baseline's ``per_pattern``) keeps its default here."""
        values = {f.name: hparams.get(f.name, f.default) for f in fields(cls)}
        return cls(**{**values, "base_filters": tuple(int(b) for b in values["base_filters"])})

    @property
    def pattern_multiple(self) -> int:
        """What a pattern's side N must be a multiple of: the encoder halves it once per level."""
        return int(2 ** len(self.base_filters))

    @property
    def filters(self) -> list[int]:
        """The encoder's widths, level by level."""
        return [int(f * self.width) for f in self.base_filters]


class _GroupNorm32(nn.GroupNorm):
    """Group normalisation computed in fp32 under bf16 autocast (where torch's CPU autocast would
    run it in bf16): its mean and variance over a group are sums that bf16 would round coarsely."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x.float())


def _block(cin: int, cout: int, convs: int = 2, norm: bool = False) -> nn.Sequential:
    """``convs`` 3x3 convolutions, each followed by ReLU; with ``norm`` a group normalisation before
    each ReLU (``NORM_GROUPS`` groups; computed per sample, so training and inference agree and a
    pattern's prediction never depends on its batch, as a batch norm's would)."""
    layers: list[nn.Module] = []
    for i in range(convs):
        layers.append(nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1))
        if norm:
            layers.append(_GroupNorm32(min(NORM_GROUPS, cout), cout))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class Decoder(nn.Module):
    """Bottleneck (N/8, ``in_channels``) -> output size, doubling ``levels`` times through ``filters`` reversed."""

    def __init__(self, in_channels: int, filters: list[int], out_channels: int, levels: int, layout: str,
                 norm: bool = False, bilinear: bool = False):
        super().__init__()
        widths = [in_channels, *filters[::-1]][: levels + 1]
        while len(widths) < levels + 1:
            widths.append(filters[0])
        pairs = list(itertools.pairwise(widths))
        if layout == "transposed":
            self.ups = nn.ModuleList(nn.ConvTranspose2d(a, a, 2, stride=2) for a in widths[:-1])
            self.blocks = nn.ModuleList(_block(a, b, norm=norm) for a, b in pairs)
        elif layout == "upsample":
            mode = "bilinear" if bilinear else "nearest"
            self.ups = nn.ModuleList(nn.Upsample(scale_factor=2, mode=mode) for _ in pairs)
            self.blocks = nn.ModuleList(_block(a, b, 1 if i == len(pairs) - 1 else 2, norm)
                                        for i, (a, b) in enumerate(pairs))
        else:
            raise ValueError(f"decoder layout must be 'upsample' or 'transposed', got '{layout}'")
        self.head = nn.Conv2d(widths[-1], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for up, block in zip(self.ups, self.blocks, strict=True):
            x = block(up(x))
        # The head runs in fp32 even under bf16 autocast: its logits become the amplitude and phase
        # the physics sees, and bf16's 8-bit mantissa would quantise the phase in steps of about
        # 0.01 rad (docs/decisions.md). One 1x1 convolution: no measurable cost.
        with torch.autocast(x.device.type, enabled=False):
            return self.head(x.float())


class EncoderDecoder(nn.Module):
    """Encoder over ``len(spec.filters)`` pooled levels plus a bottleneck; one shared decoder with two
    heads or separate amplitude and phase decoders, ``channels`` patterns in and patches out.

    The output is N/2 for the central support and N for the full one. ``decoder_width`` scales the
    decoders' filters (not the bottleneck they start from): separate decoders at half width cost
    less than one shared decoder at full width.
    """

    def __init__(self, channels: int, spec: NetworkSpec):
        super().__init__()
        for key, value, choices in (("group_norm", spec.group_norm, GROUP_NORMS),
                                    ("bilinear_upsampling", spec.bilinear_upsampling, BILINEAR_UPSAMPLINGS)):
            if value not in choices:
                raise ValueError(f"model.{key} must be one of {choices}, got '{value}'")
            if value == "phase_decoder" and not spec.separate_decoders:
                raise ValueError(f"model.{key}=phase_decoder needs model.separate_decoders=true")
        if spec.bilinear_upsampling != "none" and spec.decoder != "upsample":
            raise ValueError(f"model.bilinear_upsampling={spec.bilinear_upsampling} needs model.decoder=upsample")
        filters, layout = spec.filters, spec.decoder
        everywhere = spec.group_norm == "all"
        self.down = nn.ModuleList()
        cin = channels
        for f in filters:
            self.down.append(_block(cin, f, norm=everywhere))
            cin = f
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = _block(filters[-1], filters[-1], norm=everywhere)
        levels = len(filters) - (1 if spec.object_support == "center" else 0)
        self.separate = spec.separate_decoders
        dec = [max(1, round(f * spec.decoder_width)) for f in filters]
        bilinear_amp = spec.bilinear_upsampling == "all"
        if self.separate:
            self.amp_decoder = Decoder(filters[-1], dec, channels, levels, layout, everywhere, bilinear_amp)
            self.phase_decoder = Decoder(filters[-1], dec, channels, levels, layout, spec.group_norm != "none",
                                         spec.bilinear_upsampling != "none")
        else:
            self.decoder = Decoder(filters[-1], dec, 2 * channels, levels, layout, everywhere, bilinear_amp)
        self.out_channels = channels

    def encoder_parameters(self) -> Iterator[nn.Parameter]:
        """The encoder's weights (its pooled levels and the bottleneck): what maps a pattern to the
        features both decoders start from."""
        return itertools.chain(self.down.parameters(), self.bottleneck.parameters())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for block in self.down:
            x = self.pool(block(x))
        x = self.bottleneck(x)
        if self.separate:
            return self.amp_decoder(x), self.phase_decoder(x)
        out = self.decoder(x)
        return out[:, : self.out_channels], out[:, self.out_channels :]


def initialise(module: nn.Module, scheme: str) -> None:
    """Explicit initialisation of every convolution, biases zero.

    With PyTorch's default init the amplitude logits of different inputs differed by about 2e-6 of
    their size at the start, so the output ignored the input and training settled on a flat object.
    ``glorot`` (Keras' default, as upstream) and ``kaiming`` keep the input's variation alive;
    ``default`` leaves PyTorch's init (for ablations).
    """
    if scheme == "default":
        return
    if scheme not in ("glorot", "kaiming"):
        raise ValueError(f"model.init must be 'glorot', 'kaiming' or 'default', got '{scheme}'")
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            if scheme == "glorot":
                nn.init.xavier_uniform_(m.weight)
            else:
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
