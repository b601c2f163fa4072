"""U-Net-like encoder-decoder with an amplitude and a phase output (DESIGN section 7)."""

from __future__ import annotations

import torch
from torch import nn


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU(inplace=True),
    )


class Decoder(nn.Module):
    def __init__(self, filters: list[int], out_channels: int):
        super().__init__()
        self.ups = nn.ModuleList()
        self.blocks = nn.ModuleList()
        for deep, shallow in zip(filters[:0:-1], filters[-2::-1], strict=True):
            self.ups.append(nn.ConvTranspose2d(deep, shallow, 2, stride=2))
            self.blocks.append(_block(2 * shallow, shallow))
        self.head = nn.Conv2d(filters[0], out_channels, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = feats[-1]
        for up, block, skip in zip(self.ups, self.blocks, feats[-2::-1], strict=True):
            x = block(torch.cat((up(x), skip), dim=1))
        return self.head(x)


class EncoderDecoder(nn.Module):
    """Encoder over ``len(filters)`` levels; one shared decoder with two heads, or two decoders.

    The PINN shares its decoder trunk (the physics constrains amplitude and phase jointly); the
    supervised baseline uses two decoders, as published baselines do.
    """

    def __init__(self, in_channels: int, out_channels: int, filters: list[int], separate_decoders: bool):
        super().__init__()
        self.down = nn.ModuleList()
        cin = in_channels
        for f in filters:
            self.down.append(_block(cin, f))
            cin = f
        self.pool = nn.MaxPool2d(2)
        self.separate = separate_decoders
        if separate_decoders:
            self.amp_decoder = Decoder(filters, out_channels)
            self.phase_decoder = Decoder(filters, out_channels)
        else:
            self.decoder = Decoder(filters, 2 * out_channels)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else self.pool(x))
            feats.append(x)
        if self.separate:
            return self.amp_decoder(feats), self.phase_decoder(feats)
        out = self.decoder(feats)
        return out[:, : self.out_channels], out[:, self.out_channels :]
