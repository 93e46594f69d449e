"""A plain-PyTorch reference of AdaIN inference, written from the paper and pytorch-AdaIN's architecture.

It mirrors pytorch-AdaIN's `net.py` (the `vgg` and `decoder` Sequentials, so their `state_dict` keys are those
of the released `vgg_normalised.pth` / `decoder.pth`), `function.py` (`calc_mean_std`,
`adaptive_instance_normalization`, `coral`) and `test.py` (`style_transfer` with interpolation weights), plus
the Lua original's spatial control (`-mask`) generalised from 2 to K regions. Used by the parity tests and by
`benchmarks/adain.py`; torch is a test/bench dependency only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


def _conv_block(cin: int, cout: int) -> list[nn.Module]:
    return [nn.ReflectionPad2d((1, 1, 1, 1)), nn.Conv2d(cin, cout, (3, 3)), nn.ReLU()]


def make_vgg() -> nn.Sequential:
    """pytorch-AdaIN's `net.vgg`: a 1x1 preprocessing conv, then VGG19 to relu5_4 (53 modules, ceil-mode)."""
    layers: list[nn.Module] = [nn.Conv2d(3, 3, (1, 1))]
    cin = 3
    for block, (cout, n) in enumerate(((64, 2), (128, 2), (256, 4), (512, 4), (512, 4))):
        for _ in range(n):
            layers += _conv_block(cin, cout)
            cin = cout
        if block < 4:
            layers.append(nn.MaxPool2d((2, 2), (2, 2), (0, 0), ceil_mode=True))
    return nn.Sequential(*layers)


def make_decoder() -> nn.Sequential:
    """pytorch-AdaIN's `net.decoder` (29 modules): the encoder to relu4_1 mirrored, no output activation."""
    up = nn.Upsample(scale_factor=2, mode="nearest")
    return nn.Sequential(
        nn.ReflectionPad2d((1, 1, 1, 1)), nn.Conv2d(512, 256, (3, 3)), nn.ReLU(), up,
        *_conv_block(256, 256), *_conv_block(256, 256), *_conv_block(256, 256),
        nn.ReflectionPad2d((1, 1, 1, 1)), nn.Conv2d(256, 128, (3, 3)), nn.ReLU(), nn.Upsample(scale_factor=2),
        *_conv_block(128, 128),
        nn.ReflectionPad2d((1, 1, 1, 1)), nn.Conv2d(128, 64, (3, 3)), nn.ReLU(), nn.Upsample(scale_factor=2),
        *_conv_block(64, 64),
        nn.ReflectionPad2d((1, 1, 1, 1)), nn.Conv2d(64, 3, (3, 3)),
    )


def encoder_to_relu4_1(vgg: nn.Sequential) -> nn.Sequential:
    """test.py: `nn.Sequential(*list(vgg.children())[:31])`."""
    return nn.Sequential(*list(vgg.children())[:31])


def random_models(seed: int = 0) -> tuple[nn.Sequential, nn.Sequential]:
    """A full `vgg` and a `decoder` with random weights, in eval mode.

    The encoder's first 1x1 conv is set to what the released file holds in spirit (x255, RGB->BGR, minus a
    mean), so activations have realistic magnitudes; the other convs get He-normal weights so features neither
    vanish nor explode through 10 layers.
    """
    g = torch.Generator().manual_seed(seed)
    vgg, decoder = make_vgg(), make_decoder()
    with torch.no_grad():
        for m in list(vgg.modules()) + list(decoder.modules()):
            if isinstance(m, nn.Conv2d):
                fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.01)
        pre = vgg[0]
        pre.weight.zero_()
        for o in range(3):
            pre.weight[o, 2 - o, 0, 0] = 255.0
        pre.bias.copy_(-torch.tensor([103.939, 116.779, 123.68]))
        # Scale the last conv so a stylized image sits mostly inside [0, 1] (mean 0.5, std 0.15): otherwise
        # the final clip would hide any difference between implementations.
        x = torch.rand(1, 3, 64, 64, generator=g)
        y = decoder(encoder_to_relu4_1(vgg)(x))
        last = decoder[-1]
        scale = 0.15 / y.std().item()
        last.weight.mul_(scale)
        last.bias.mul_(scale).add_(0.5 - y.mean().item() * scale)
    return vgg.eval(), decoder.eval()


def calc_mean_std(feat: torch.Tensor, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """function.py: per-image, per-channel mean and std (unbiased variance + eps)."""
    size = feat.size()
    assert len(size) == 4
    n, c = size[:2]
    feat_var = feat.view(n, c, -1).var(dim=2) + eps
    feat_std = feat_var.sqrt().view(n, c, 1, 1)
    feat_mean = feat.view(n, c, -1).mean(dim=2).view(n, c, 1, 1)
    return feat_mean, feat_std


def adaptive_instance_normalization(content_feat: torch.Tensor, style_feat: torch.Tensor) -> torch.Tensor:
    """function.py's AdaIN."""
    assert content_feat.size()[:2] == style_feat.size()[:2]
    size = content_feat.size()
    style_mean, style_std = calc_mean_std(style_feat)
    content_mean, content_std = calc_mean_std(content_feat)
    normalized_feat = (content_feat - content_mean.expand(size)) / content_std.expand(size)
    return normalized_feat * style_std.expand(size) + style_mean.expand(size)


def _calc_feat_flatten_mean_std(feat: torch.Tensor):
    assert feat.size()[0] == 3
    feat_flatten = feat.view(3, -1)
    return feat_flatten, feat_flatten.mean(dim=-1, keepdim=True), feat_flatten.std(dim=-1, keepdim=True)


def _mat_sqrt(x: torch.Tensor) -> torch.Tensor:
    u, d, v = torch.svd(x)
    return torch.mm(torch.mm(u, d.pow(0.5).diag()), v.t())


def coral(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """function.py's CORAL: recolour `source` (3, H, W) to `target`'s RGB mean and covariance (no clip)."""
    source_f, source_f_mean, source_f_std = _calc_feat_flatten_mean_std(source)
    source_f_norm = (source_f - source_f_mean.expand_as(source_f)) / source_f_std.expand_as(source_f)
    source_f_cov_eye = torch.mm(source_f_norm, source_f_norm.t()) + torch.eye(3)
    target_f, target_f_mean, target_f_std = _calc_feat_flatten_mean_std(target)
    target_f_norm = (target_f - target_f_mean.expand_as(target_f)) / target_f_std.expand_as(target_f)
    target_f_cov_eye = torch.mm(target_f_norm, target_f_norm.t()) + torch.eye(3)
    source_f_norm_transfer = torch.mm(_mat_sqrt(target_f_cov_eye),
                                      torch.mm(torch.inverse(_mat_sqrt(source_f_cov_eye)), source_f_norm))
    source_f_transfer = (source_f_norm_transfer * target_f_std.expand_as(source_f_norm)
                         + target_f_mean.expand_as(source_f_norm))
    return source_f_transfer.view(source.size())


def style_transfer(vgg: nn.Module, decoder: nn.Module, content: torch.Tensor, style: torch.Tensor,
                   alpha: float = 1.0, interpolation_weights: Sequence[float] | None = None) -> torch.Tensor:
    """test.py's `style_transfer` (vgg cut to relu4_1); with weights, `content` is expanded to the styles."""
    assert 0.0 <= alpha <= 1.0
    content_f = vgg(content)
    style_f = vgg(style)
    if interpolation_weights:
        _, c, h, w = content_f.size()
        feat = torch.zeros(1, c, h, w, device=content.device)
        base_feat = adaptive_instance_normalization(content_f, style_f)
        for i, wgt in enumerate(interpolation_weights):
            feat = feat + wgt * base_feat[i:i + 1]
        content_f = content_f[0:1]
    else:
        feat = adaptive_instance_normalization(content_f, style_f)
    feat = feat * alpha + content_f * (1 - alpha)
    return decoder(feat)


def masked_style_transfer(vgg: nn.Module, decoder: nn.Module, content: torch.Tensor, styles: torch.Tensor,
                          masks: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """The Lua original's spatial control, for K binary masks and K styles.

    As test.lua: the masks are brought to the relu4_1 grid, each region's content features are gathered,
    AdaIN-ed (their own statistics) to its style, and scattered back; then alpha, then the decoder. The masks
    are reduced to the grid by area averaging (torch's adaptive average pooling) and must be binary there.

    Args:
      content: (1, 3, H, W); styles: (K, 3, h, w); masks: (K, H, W) in {0, 1}.
    """
    content_f = vgg(content)
    _, c, h, w = content_f.size()
    grid = F.adaptive_avg_pool2d(masks[:, None].float(), (h, w))[:, 0]
    view = content_f.view(c, -1)
    target = torch.zeros_like(view)
    for k in range(styles.size(0)):
        region = grid[k].reshape(-1)
        assert torch.all((region == 0) | (region == 1)), "reference masks must be binary on the feature grid"
        idx = torch.nonzero(region == 1).view(-1)
        if idx.numel() == 0:
            continue
        style_f = vgg(styles[k:k + 1])
        part = view.index_select(1, idx).view(1, c, idx.numel(), 1)
        target.index_copy_(1, idx, adaptive_instance_normalization(part, style_f).view(c, -1))
    covered = grid.sum(0).reshape(-1) > 0
    target[:, ~covered] = view[:, ~covered]
    feat = target.view_as(content_f) * alpha + content_f * (1 - alpha)
    return decoder(feat)


def to_torch(img: np.ndarray) -> torch.Tensor:
    """NHWC numpy -> NCHW torch float32."""
    return torch.from_numpy(np.ascontiguousarray(np.asarray(img, np.float32).transpose(0, 3, 1, 2)))


def to_numpy(x: torch.Tensor) -> np.ndarray:
    """NCHW torch -> NHWC numpy."""
    return x.detach().cpu().numpy().transpose(0, 2, 3, 1)


def save_random_weights(directory, seed: int = 0):
    """Write a random `vgg_normalised.pth` (legacy serialisation, as released) and `decoder.pth` (zip).

    Returns:
      (vgg_path, decoder_path, (vgg, decoder) modules).
    """
    from pathlib import Path

    d = Path(directory)
    vgg, decoder = random_models(seed)
    torch.save(vgg.state_dict(), d / "vgg_normalised.pth", _use_new_zipfile_serialization=False)
    torch.save(decoder.state_dict(), d / "decoder.pth")
    return d / "vgg_normalised.pth", d / "decoder.pth", (vgg, decoder)
