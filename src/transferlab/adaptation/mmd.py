"""Multi-kernel maximum mean discrepancy between source and target features (DAN).

Long, Cao, Wang & Jordan 2015, "Learning Transferable Features with Deep Adaptation
Networks" (ICML). The squared MMD between the two domains' feature distributions in the
space of a kernel k,

    MMD^2 = E[k(s, s')] + E[k(t, t')] - 2 E[k(s, t)],

is 0 when they are the same, so minimising it aligns the features. As in DAN, k is the
mean of a family of Gaussian kernels exp(-||x - y||^2 / b_u) whose bandwidths b_u are
spread by a factor `multiplier` around the mean (or median) squared distance of the batch.
Two choices of ours: the kernels are weighted equally (DAN learns their weights), and the
estimate is the unbiased quadratic one over the batch (DAN's linear-time estimate has a
larger variance; batches are small enough for the quadratic one).
"""

from __future__ import annotations

import torch

from transferlab.adaptation.base import DomainAdaptation
from transferlab.components import choice, number, whole_number

BANDWIDTHS = ("mean", "median")


class MultiKernelMMD(DomainAdaptation):
    """`adapt=mmd`: the unbiased multi-kernel MMD^2 of the source and target features (may
    be slightly negative when the domains match). No parameters. Needs at least 2 examples
    per domain. `kernels` Gaussian kernels, bandwidths base x multiplier^(u - (kernels - 1)
    / 2), base the `bandwidth` (mean or median) of the batch's squared distances."""

    def __init__(
        self,
        feature_dim: int,
        num_classes: int,
        weight: float = 1.0,
        kernels: int = 5,
        multiplier: float = 2.0,
        bandwidth: str = "mean",
    ):
        self.check_options(
            weight=weight, kernels=kernels, multiplier=multiplier, bandwidth=bandwidth
        )
        super().__init__(feature_dim, num_classes, weight)
        self.bandwidth = bandwidth
        exponents = torch.arange(kernels, dtype=torch.float32) - (kernels - 1) / 2
        self.register_buffer("scales", multiplier**exponents, persistent=False)

    @staticmethod
    def check_options(weight: float, kernels: int, multiplier: float, bandwidth: str) -> None:
        DomainAdaptation.check_options(weight)
        whole_number("kernels", kernels, 1)
        number("multiplier", multiplier, 1, strict=True)
        choice("bandwidth", bandwidth, BANDWIDTHS)

    def forward(
        self,
        source_features: torch.Tensor,
        target_features: torch.Tensor,
        source_logits: torch.Tensor,
        target_logits: torch.Tensor,
        progress: float,
    ) -> torch.Tensor:
        n, m = len(source_features), len(target_features)
        if min(n, m) < 2:
            raise ValueError(f"MMD needs 2+ examples per domain, got {n} source and {m} target")
        with torch.autocast(source_features.device.type, enabled=False):
            features = torch.cat([source_features, target_features]).float()
            norms = features.pow(2).sum(1)  # |x - y|^2 without a (batch x batch x dim) tensor
            distances = (norms[:, None] + norms[None, :] - 2 * features @ features.T).clamp_min(0)
            off_diagonal = ~torch.eye(n + m, dtype=torch.bool, device=features.device)
            pairs = distances[off_diagonal].detach()
            base = pairs.mean() if self.bandwidth == "mean" else pairs.median()
            bandwidths = base.clamp_min(1e-12) * self.scales.float()
            kernel = torch.exp(-distances.unsqueeze(0) / bandwidths.view(-1, 1, 1)).mean(0)
            source, target = kernel[:n, :n], kernel[n:, n:]
            within_source = (source.sum() - source.trace()) / (n * (n - 1))
            within_target = (target.sum() - target.trace()) / (m * (m - 1))
            return within_source + within_target - 2 * kernel[:n, n:].mean()
