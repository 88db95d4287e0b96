"""Networks that expose their features at three named scales.

Every network's ``forward(x)`` returns the segmentation logits, so inference, export and MONAI
Label treat teachers and students alike. ``forward(x, return_features=True)`` returns a dict with
``seg`` (and ``rec`` for multi-task teachers) plus the ``encoder``, ``bottleneck`` and ``decoder``
feature maps the distillation losses tap — no positional module-name hooks needed.

* ``encoder``: output of the deepest encoder block (the last skip connection).
* ``bottleneck``: output of the bottleneck.
* ``decoder``: output of the last segmentation-decoder block, just before the classifier.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import UnetrBasicBlock, UnetrPrUpBlock, UnetrUpBlock
from monai.networks.blocks.dynunet_block import UnetOutBlock
from monai.networks.nets.vit import ViT
from torch import nn

SCALES = ("encoder", "bottleneck", "decoder")


def _conv_block(in_channels: int, out_channels: int, convs: int, stride: int = 1) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(convs):
        layers += [
            nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, 3, stride=stride if i == 0 else 1,
                      padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        ]
    return nn.Sequential(*layers)


class _Decoder(nn.Module):
    """UNet decoder: transposed-conv upsampling, concatenation with the skip, conv block."""

    def __init__(self, bottleneck: int, channels: Sequence[int], convs: int, out_channels: int):
        super().__init__()
        self.ups = nn.ModuleList()
        self.blocks = nn.ModuleList()
        previous = bottleneck
        for width in reversed(channels):
            self.ups.append(nn.ConvTranspose2d(previous, width, 2, stride=2))
            self.blocks.append(_conv_block(2 * width, width, convs))
            previous = width
        self.head = nn.Conv2d(channels[0], out_channels, 1)

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        for up, block, skip in zip(self.ups, self.blocks, reversed(skips)):
            x = block(torch.cat([up(x), skip], dim=1))
        return self.head(x), x


class FeatureUNet(nn.Module):
    """2D UNet with optional reconstruction decoder (the multi-task teacher T1) or without (students).

    ``channels`` are the encoder widths (one per resolution level, each followed by 2×2 pooling),
    ``bottleneck`` the bottleneck width and ``convs_per_block`` the 3×3 convs in every block.
    Paper sizes: T1 ``(64,128,256,512)/1024/2`` with reconstruction ≈ 43.2 M parameters; S1
    ``(16,32)/64/1`` ≈ 57 k; S2 ``(16,32,64)/128/1`` ≈ 0.24 M.

    ``stem_stride`` > 1 makes the first convolution strided and upsamples the logits bilinearly at the
    end: the same parameters at about ``1/stem_stride²`` of the FLOPs (the fast CPU student S1-fast).
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        channels: Sequence[int] = (16, 32),
        bottleneck: int = 64,
        convs_per_block: int = 1,
        reconstruction: bool = False,
        stem_stride: int = 1,
    ):
        super().__init__()
        self.hparams = {"in_channels": in_channels, "out_channels": out_channels, "channels": list(channels),
                        "bottleneck": bottleneck, "convs_per_block": convs_per_block,
                        "reconstruction": reconstruction, "stem_stride": stem_stride}
        self.encoders = nn.ModuleList()
        previous = in_channels
        for level, width in enumerate(channels):
            self.encoders.append(_conv_block(previous, width, convs_per_block, stride=stem_stride if level == 0 else 1))
            previous = width
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = _conv_block(previous, bottleneck, convs_per_block)
        self.seg_decoder = _Decoder(bottleneck, channels, convs_per_block, out_channels)
        self.rec_decoder = _Decoder(bottleneck, channels, convs_per_block, in_channels) if reconstruction else None
        self.feature_channels = {"encoder": channels[-1], "bottleneck": bottleneck, "decoder": channels[0]}
        self.stem_stride = stem_stride

    def _full_size(self, x: torch.Tensor) -> torch.Tensor:
        if self.stem_stride == 1:
            return x
        return F.interpolate(x, scale_factor=float(self.stem_stride), mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        skips = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
            x = self.pool(x)
        bottleneck = self.bottleneck(x)
        seg, decoder = self.seg_decoder(bottleneck, skips)
        seg = self._full_size(seg)
        if not return_features:
            return seg
        out = {"seg": seg, "encoder": skips[-1], "bottleneck": bottleneck, "decoder": decoder}
        if self.rec_decoder is not None:
            out["rec"] = self._full_size(self.rec_decoder(bottleneck, skips)[0])
        return out


class _UnetrDecoder(nn.Module):
    """UNETR decoder path from the ViT bottleneck and the shared encoder skips."""

    def __init__(self, hidden_size: int, feature_size: int, out_channels: int, norm_name: str):
        super().__init__()
        widths = [hidden_size, feature_size * 8, feature_size * 4, feature_size * 2, feature_size]
        self.blocks = nn.ModuleList(
            UnetrUpBlock(spatial_dims=2, in_channels=a, out_channels=b, kernel_size=3, upsample_kernel_size=2,
                         norm_name=norm_name, res_block=True)
            for a, b in zip(widths[:-1], widths[1:])
        )
        self.head = UnetOutBlock(spatial_dims=2, in_channels=feature_size, out_channels=out_channels)

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        for block, skip in zip(self.blocks, reversed(skips)):
            x = block(x, skip)
        return self.head(x), x


class MultiTaskUNETR(nn.Module):
    """Multi-task UNETR-style teacher (T2): ViT encoder, UNETR skips, segmentation and reconstruction decoders.

    The ViT needs a fixed ``img_size`` (a multiple of 16); use ``SliceInferer`` with that roi size.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        img_size: int = 256,
        feature_size: int = 32,
        hidden_size: int = 768,
        mlp_dim: int = 3072,
        num_layers: int = 12,
        num_heads: int = 12,
        norm_name: str = "instance",
    ):
        super().__init__()
        if img_size % 16:
            raise ValueError(f"MultiTaskUNETR img_size={img_size} must be a multiple of the 16-pixel patch.")
        self.hparams = {"in_channels": in_channels, "out_channels": out_channels, "img_size": img_size,
                        "feature_size": feature_size, "hidden_size": hidden_size, "mlp_dim": mlp_dim,
                        "num_layers": num_layers, "num_heads": num_heads, "norm_name": norm_name}
        self.grid = img_size // 16
        self.hidden_size = hidden_size
        self.vit = ViT(in_channels=in_channels, img_size=img_size, patch_size=16, hidden_size=hidden_size,
                       mlp_dim=mlp_dim, num_layers=num_layers, num_heads=num_heads, spatial_dims=2)
        # UNETR taps the transformer at a quarter, half and three quarters of its depth.
        self.taps = [num_layers // 4 - 1, num_layers // 2 - 1, 3 * num_layers // 4 - 1]
        self.skip0 = UnetrBasicBlock(spatial_dims=2, in_channels=in_channels, out_channels=feature_size,
                                     kernel_size=3, stride=1, norm_name=norm_name, res_block=True)
        self.skips = nn.ModuleList(
            UnetrPrUpBlock(spatial_dims=2, in_channels=hidden_size, out_channels=feature_size * factor,
                           num_layer=layers, kernel_size=3, stride=1, upsample_kernel_size=2,
                           norm_name=norm_name, conv_block=True, res_block=True)
            for factor, layers in ((2, 2), (4, 1), (8, 0))
        )
        self.seg_decoder = _UnetrDecoder(hidden_size, feature_size, out_channels, norm_name)
        self.rec_decoder = _UnetrDecoder(hidden_size, feature_size, in_channels, norm_name)
        self.feature_channels = {"encoder": feature_size * 8, "bottleneck": hidden_size, "decoder": feature_size}

    def _to_map(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens.transpose(1, 2).reshape(tokens.shape[0], self.hidden_size, self.grid, self.grid)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        tokens, hidden = self.vit(x)
        skips = [self.skip0(x)] + [block(self._to_map(hidden[i])) for block, i in zip(self.skips, self.taps)]
        bottleneck = self._to_map(tokens)
        seg, decoder = self.seg_decoder(bottleneck, skips)
        if not return_features:
            return seg
        return {
            "seg": seg,
            "rec": self.rec_decoder(bottleneck, skips)[0],
            "encoder": skips[-1],
            "bottleneck": bottleneck,
            "decoder": decoder,
        }


class SelectOutputs(nn.Module):
    """View of a feature network that returns chosen outputs as a tuple (e.g. ``seg`` and ``rec`` for
    validating a teacher's reconstruction through an inferer)."""

    def __init__(self, network: nn.Module, keys: Sequence[str] = ("seg", "rec")):
        super().__init__()
        self.network = network
        self.keys = tuple(keys)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.network(x, return_features=True)
        return tuple(out[k] for k in self.keys)


class MeanLogitEnsemble(nn.Module):
    """Several trained networks as one: the mean of their segmentation logits. Built from the members'
    definitions (``{"members": [def, ...]}``, as ``model.json`` records it), so one checkpoint holds every
    member's weights (``members.0.*``, ``members.1.*`` ...) and evaluation and distillation load it as any
    network. ``return_features=True`` gives the mean of the image-space outputs every member has (``seg``,
    and ``rec`` for multi-task teachers): the members' feature maps do not correspond channel by channel."""

    def __init__(self, members: Sequence[nn.Module | dict]):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member network.")
        from .serving.model_info import network_definition

        self.members = nn.ModuleList(m if isinstance(m, nn.Module) else from_definition(m) for m in members)
        self.hparams = {"members": [network_definition(m) for m in self.members]}
        self.feature_channels: dict[str, int] = {}
        # what a distillation term may read from it as a teacher (the trainer refuses any other output)
        self.provides = sorted(set.intersection(*(_image_outputs(m) for m in self.members)))

    def forward(self, x: torch.Tensor, return_features: bool = False):
        if not return_features:
            return torch.stack([member(x) for member in self.members]).mean(dim=0)
        outputs = [member(x, return_features=True) for member in self.members]
        return {key: torch.stack([out[key] for out in outputs]).mean(dim=0) for key in self.provides}


def _image_outputs(network: nn.Module) -> set[str]:
    """The image-space outputs a network gives: ``seg``, and ``rec`` for a multi-task teacher."""
    declared = getattr(network, "provides", None)
    if declared is not None:
        return set(declared) & {"seg", "rec"}
    return {"seg"} | ({"rec"} if getattr(network, "rec_decoder", None) is not None else set())


def count_parameters(network: nn.Module) -> int:
    """Every parameter, trainable or frozen: the size the model is reported and compared by."""
    return sum(p.numel() for p in network.parameters())


def from_definition(definition: dict) -> nn.Module:
    """A network from its config definition (``{"_target_": ..., **arguments}``), as a bundle config builds it."""
    from monai.bundle import ConfigParser

    if not isinstance(definition, dict) or "_target_" not in definition:
        raise ValueError(f"a network definition is a dict with \"_target_\", got {definition!r}.")
    return ConfigParser({"network": definition}).get_parsed_content("network")
