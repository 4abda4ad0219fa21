"""A compact CNN for 8-32 px images: trains in seconds on a CPU, so offline runs stay fast."""

from torch import nn


def _conv_block(c_in: int, c_out: int, pool: nn.Module) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        pool,
    )


class SmallCNN(nn.Module):
    """Three conv blocks (the backbone's stages), global pooling and a linear classifier."""

    def __init__(self, num_classes: int = 10, widths: tuple[int, int, int] = (32, 64, 128)):
        super().__init__()
        w1, w2, w3 = widths
        self.features = nn.Sequential(
            _conv_block(3, w1, nn.MaxPool2d(2)),
            _conv_block(w1, w2, nn.MaxPool2d(2)),
            _conv_block(w2, w3, nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())),
        )
        self.classifier = nn.Linear(w3, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x))
