"""torchvision's classifier zoo through the channel graph (slow; `make test-all`).

Every classifier builds without a traceback, the removal check passes on a random half
plan, and at least 85% of the channels (input and output layers excluded) are in
prunable groups, or the model is one of the listed exceptions, frozen for the listed
reason (the README's list, from bench/results/graph.json).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

torchvision = pytest.importorskip("torchvision")

from halp_trt.graph import ChannelGraph  # noqa: E402

from .test_graph import random_plan  # noqa: E402

pytestmark = pytest.mark.slow

#: Model name prefix -> words of the reason that freezes most of its channels.
EXCEPTIONS = {
    "shufflenet_v2": "splits or merges the channel dimension",
    "swin_v2": "input channels not produced by a traced layer",
    "maxvit": "of the channels at sizes fixed by the model's code",
}
NEEDS_224 = ("vit_", "swin_", "maxvit_", "inception_v3")
#: Larger models are built but not checked (the check holds two more copies).
CHECK_MAX_PARAMS = 150_000_000


@pytest.mark.parametrize("name", torchvision.models.list_models(module=torchvision.models))
def test_zoo_model(name):
    size = 224 if name.startswith(NEEDS_224) else 64
    torch.manual_seed(0)
    model = torchvision.models.get_model(name).eval()
    graph = ChannelGraph(model, torch.randn(1, 3, size, size))
    io = [
        g
        for g in graph.frozen
        if g.reason == "model input" or (g.reason or "").startswith("model output")
    ]
    total = sum(g.size for g in graph.groups) - sum(g.size for g in io)
    coverage = sum(g.size for g in graph.prunable) / total
    exception = next((r for p, r in EXCEPTIONS.items() if name.startswith(p)), None)
    if exception is None:
        assert coverage >= 0.85, [(g.size, g.reason) for g in graph.frozen]
    else:
        assert any(exception in (g.reason or "") for g in graph.frozen)
    for g in graph.frozen:
        assert g.reason
    if graph.params <= CHECK_MAX_PARAMS:
        result = graph.check(random_plan(graph, np.random.default_rng(0), 0.5, 0.5))
        assert result.passed, result


@pytest.mark.parametrize("name", ["swin_t", "swin_v2_t", "maxvit_t", "densenet121", "vit_b_32"])
def test_zoo_fast_construction_equals_the_library(name, monkeypatch):
    """Linear-time group expansion builds the graph Torch-Pruning's own expansion does,
    on the models whose groups reach a layer many times by different paths."""
    from halp_trt.graph import pruning_group

    from .test_graph_speed import structure

    size = 224 if name.startswith(NEEDS_224) else 64
    torch.manual_seed(0)
    model = torchvision.models.get_model(name).eval()
    x = torch.randn(1, 3, size, size)
    fast = structure(ChannelGraph(model, x))
    monkeypatch.setattr(pruning_group, "available", lambda: False)
    assert structure(ChannelGraph(model, x)) == fast
