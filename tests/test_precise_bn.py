"""PreciseBN: BatchNorm statistics recomputed with the current weights before validation."""

from __future__ import annotations

import torch
from torch import nn

from fastsam_train.train.callbacks import recompute_bn_stats


def test_recomputed_statistics_are_the_average_of_batch_statistics():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, momentum=0.03), nn.ReLU(),
                        nn.Conv2d(4, 2, 1), nn.BatchNorm2d(2, momentum=0.03)).eval()
    batches = [torch.rand(5, 3, 8, 8) * (i + 1) + i for i in range(3)]
    assert recompute_bn_stats(net, batches) == 3
    with torch.no_grad():
        first = [net[0](b) for b in batches]
    mean = torch.stack([x.mean((0, 2, 3)) for x in first]).mean(0)
    var = torch.stack([x.var((0, 2, 3), unbiased=True) for x in first]).mean(0)
    assert torch.allclose(net[1].running_mean, mean, atol=1e-5)
    assert torch.allclose(net[1].running_var, var, rtol=1e-4)
    assert not net.training and net[1].momentum == 0.03 and net[4].momentum == 0.03
    # stale statistics (here: the defaults) give eval outputs far from batch-statistics ones
    stale = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
    x = torch.rand(64, 3, 8, 8) * 5 + 3
    with torch.no_grad():
        batch_stats = stale.train()(x)
        stale.eval()
        before = (stale(x) - batch_stats).abs().max()
        recompute_bn_stats(stale, [x])
        after = (stale(x) - batch_stats).abs().max()
    assert before > 1 and after < 1e-2
    state = {k: v.clone() for k, v in net.state_dict().items()}
    assert recompute_bn_stats(net, []) == 0  # nothing to measure: unchanged
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in state.items())
