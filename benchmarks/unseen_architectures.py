"""The shipped recipe on architectures it was never measured on: does the family rule hold?

``unsir.recipes`` measured two families (a compact CNN; AllCNN, ResNet18 and MobileNetV2) and
gives any other architecture the family its depth matches (``inferred_family``). This runs the
benchmark's held-out grid (``quality.py``, unchanged: same bounds, two retrainings beside) on
four classifiers that no recipe choice looked at, none of them in ``unsir.models``:

- ``mlp``: three linear layers, no convolution, no BatchNorm (compact by depth);
- ``lenet``: LeNet-5's two convolutions and three linear layers, no BatchNorm (compact);
- ``vgg_bn``: eight 3x3 convolutions with BatchNorm, VGG-11's layout scaled to 8x8 (deep);
- ``shufflenet_v2``: torchvision's ShuffleNetV2 x1.0 with a stride-1 stem and no max-pool
  (grouped convolutions, channel shuffle; deep).

    python benchmarks/unseen_architectures.py --archs mlp lenet            # 75 held-out runs each
    python benchmarks/unseen_architectures.py --archs vgg_bn shufflenet_v2 --seeds 3 4 \\
        --singles 0 2 5 7 --pairs 1 --triples 1                           # the deep grid's 12 runs

Every other option is ``quality.py``'s. The architectures are registered for this process only.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from unsir.models import ARCHITECTURES  # noqa: E402


class MLP(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 1, side: int = 8):
        super().__init__()
        self.features = nn.Sequential(
            nn.AdaptiveAvgPool2d(side),  # any input size; digits are 8x8 already
            nn.Flatten(),
            nn.Linear(in_channels * side * side, 256),
            nn.ReLU(),
            nn.Linear(256, 128),
            nn.ReLU(),
        )
        self.classifier = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class LeNet(nn.Module):
    """LeNet-5 (tanh replaced by ReLU, padding keeping 8x8 inputs at 2x2 after two pools)."""

    def __init__(self, num_classes: int, in_channels: int = 1):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(16 * 4, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
        )
        self.classifier = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class VGGBN(nn.Module):
    """VGG-11's eight convolutions (64-512 channels halved) with BatchNorm; two pools for 8x8."""

    def __init__(self, num_classes: int, in_channels: int = 1):
        super().__init__()
        layout = [32, "M", 64, "M", 128, 128, 256, 256, 256, 256]
        layers: list[nn.Module] = []
        channels = in_channels
        for item in layout:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            layers += [nn.Conv2d(channels, int(item), 3, padding=1), nn.BatchNorm2d(int(item)), nn.ReLU()]
            channels = int(item)
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def shufflenet_v2(num_classes: int, in_channels: int = 3) -> nn.Module:
    from torchvision.models import shufflenet_v2_x1_0

    model = shufflenet_v2_x1_0(weights=None, num_classes=num_classes)
    stem = model.conv1[0]
    model.conv1[0] = nn.Conv2d(in_channels, stem.out_channels, 3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


UNSEEN = {"mlp": MLP, "lenet": LeNet, "vgg_bn": VGGBN, "shufflenet_v2": shufflenet_v2}


def main(argv: list[str] | None = None) -> int:
    ARCHITECTURES.update(UNSEEN)  # before quality parses --archs against the registry
    import quality

    from unsir.recipes import family_of

    args = list(sys.argv[1:] if argv is None else argv)
    if "--out" not in args:
        args += ["--out", "reports/bench/unseen-architectures.json"]
    for name in UNSEEN:
        print(f"{name}: {family_of(name)} family (inferred)")
    return quality.main(args)


if __name__ == "__main__":
    sys.exit(main())
