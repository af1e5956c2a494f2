"""U^2-Net, the saliency model the paper names (docs/paper.md §3.1), in the layout of its official weights.

Written here from the published architecture: Qin, Zhang, Huang, Dehghan, Zaiane and Jagersand, "U^2-Net: Going
Deeper with Nested U-Structure for Salient Object Detection", Pattern Recognition 106, 2020 (Fig. 2 and
Table 1 give the stages). The module and parameter names (``stage1`` ... ``stage6``, ``stage5d`` ...
``stage1d``, ``side1`` ... ``side6``, ``outconv``; inside a stage ``rebnconvin``, ``rebnconv1`` ...,
``rebnconv1d``, each with ``conv_s1`` and ``bn_s1``) are those of the authors' released state dicts
``u2net.pth`` (the full model, 176.3 MB) and ``u2netp.pth`` (U^2-Net-small, 4.7 MB), so both load as they are;
the names are the checkpoints' contract, not a style choice.

The structure:

- a residual U-block RSU-L is an input conv, a small U-Net of height L on top of it (L-1 encoder convs with
  2x max-pooling between them, a dilated conv at the bottom, L-1 decoder convs on the upsampled deeper map
  concatenated with the skip) and a residual sum with the input conv's output;
- RSU-4F replaces pooling and upsampling by dilations 1, 2, 4, 8, for the low-resolution stages;
- the outer U: six encoder stages (RSU-7, -6, -5, -4, -4F, -4F) with 2x pooling between them, five decoder
  stages on the upsampled deeper stage concatenated with the encoder's, a 3x3 side conv to one channel on each
  decoder stage and on stage 6, upsampled to the input size, and a 1x1 ``outconv`` fusing the six side maps.

``forward`` returns the fused logits (the official code returns the sigmoid of the fused map and of each side
map; inference uses the fused one). Upsampling goes to the skip's size rather than by a fixed factor, which is
the same for inputs divisible by 32 (320, the official input size) and also works for other sizes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# (height, mid channels, out channels, dilated) of stage1 ... stage6, then of stage5d ... stage1d. The input
# channels follow: 3 for stage1, the previous stage's output for the others; a decoder stage takes the deeper
# decoded map concatenated with its encoder stage's output. Paper Table 1 (U^2-Net and U^2-Net-small).
FULL = (
    ((7, 32, 64, False), (6, 32, 128, False), (5, 64, 256, False), (4, 128, 512, False), (4, 256, 512, True),
     (4, 256, 512, True)),
    ((4, 256, 512, True), (4, 128, 256, False), (5, 64, 128, False), (6, 32, 64, False), (7, 16, 64, False)),
)  # fmt: skip
SMALL = (
    ((7, 16, 64, False), (6, 16, 64, False), (5, 16, 64, False), (4, 16, 64, False), (4, 16, 64, True),
     (4, 16, 64, True)),
    ((4, 16, 64, True), (4, 16, 64, False), (5, 16, 64, False), (6, 16, 64, False), (7, 16, 64, False)),
)  # fmt: skip
VARIANTS = {"full": FULL, "small": SMALL}
"""``full`` is ``u2net.pth``'s architecture, ``small`` is ``u2netp.pth``'s."""

INPUT_SIZE = 320
"""The side the official models were trained and are run at."""


def _up_to(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return x if x.shape[-2:] == ref.shape[-2:] else F.interpolate(x, size=ref.shape[-2:], mode="bilinear")


class ConvBNReLU(nn.Module):
    """3x3 conv (dilated by ``dilation``), batch norm, ReLU; ``conv_s1``/``bn_s1`` are the checkpoints' names."""

    def __init__(self, cin: int, cout: int, dilation: int = 1) -> None:
        super().__init__()
        self.conv_s1 = nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation)
        self.bn_s1 = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn_s1(self.conv_s1(x)))


class RSU(nn.Module):
    """Residual U-block RSU-``height`` (``dilated``: RSU-4F, no pooling, dilations 1, 2, 4, 8 instead)."""

    def __init__(self, height: int, cin: int, mid: int, cout: int, dilated: bool = False) -> None:
        super().__init__()
        self.height, self.dilated = height, dilated
        # Encoder conv i (1-based) is dilated 2^(i-1) in RSU-4F; in RSU-L only the bottom one (i = L) is, by 2.
        rate = [2 ** (i - 1) if dilated else 1 for i in range(1, height)] + [2 ** (height - 1) if dilated else 2]
        self.rebnconvin = ConvBNReLU(cin, cout)
        for i in range(1, height + 1):
            self.add_module(f"rebnconv{i}", ConvBNReLU(cout if i == 1 else mid, mid, rate[i - 1]))
        for i in range(height - 1, 0, -1):
            self.add_module(f"rebnconv{i}d", ConvBNReLU(2 * mid, cout if i == 1 else mid, rate[i - 1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_in = self.rebnconvin(x)
        skips, h = [], x_in
        for i in range(1, self.height):
            if i > 1 and not self.dilated:
                h = F.max_pool2d(h, 2, stride=2, ceil_mode=True)
            h = getattr(self, f"rebnconv{i}")(h)
            skips.append(h)
        h = getattr(self, f"rebnconv{self.height}")(h)
        for i in range(self.height - 1, 0, -1):
            skip = skips[i - 1]
            h = getattr(self, f"rebnconv{i}d")(torch.cat([_up_to(h, skip), skip], dim=1))
        return h + x_in


class U2Net(nn.Module):
    """U^2-Net (``variant="full"``) or U^2-Net-small (``"small"``): (B, 3, H, W) normalised -> (B, 1, H, W) logits."""

    def __init__(self, variant: str = "full") -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown U^2-Net variant {variant!r}; expected one of {sorted(VARIANTS)}")
        self.variant = variant
        encoders, decoders = VARIANTS[variant]
        outs = [out for _, _, out, _ in encoders]
        cin = 3
        for i, (height, mid, out, dilated) in enumerate(encoders, 1):
            self.add_module(f"stage{i}", RSU(height, cin, mid, out, dilated))
            cin = out
        deeper = outs[-1]
        for i, (height, mid, out, dilated) in zip(range(5, 0, -1), decoders, strict=True):
            self.add_module(f"stage{i}d", RSU(height, deeper + outs[i - 1], mid, out, dilated))
            self.add_module(f"side{i}", nn.Conv2d(out, 1, 3, padding=1))
            deeper = out
        self.side6 = nn.Conv2d(outs[-1], 1, 3, padding=1)
        self.outconv = nn.Conv2d(6, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats, h = [], x
        for i in range(1, 7):
            h = getattr(self, f"stage{i}")(h if i == 1 else F.max_pool2d(h, 2, stride=2, ceil_mode=True))
            feats.append(h)
        sides = {6: self.side6(h)}
        for i in range(5, 0, -1):
            skip = feats[i - 1]
            h = getattr(self, f"stage{i}d")(torch.cat([_up_to(h, skip), skip], dim=1))
            sides[i] = getattr(self, f"side{i}")(h)
        return self.outconv(torch.cat([_up_to(sides[i], x) for i in range(1, 7)], dim=1))
