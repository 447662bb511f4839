"""The channel graph's fast construction builds the same graph as the slow one.

ChannelGraph expands Torch-Pruning's groups with :mod:`halp_trt.graph.pruning_group`
(linear time) instead of the library's ``get_pruning_group`` (quadratic), skips the
library's own index-map pass at the end of its build, and builds on one intra-op thread
with the cyclic garbage collector paused. None of that may change a group: these tests
compare group ids, members, index maps, units, frozen reasons, removal roots and
LayerNorm axes with the library's path, and with the graphs the code built before
(recorded fingerprints).
"""

from __future__ import annotations

import gc
import hashlib
import json
from contextlib import contextmanager

import pytest
import torch
import torch.nn as nn
import torch_pruning as tp

from halp_trt.graph import ChannelGraph, pruning_group, trace

from .zoo import ZOO, build

#: sha256 (first 16 hex digits) of :func:`structure` for every model of tests/halp_trt/
#: zoo.py, built by the code before the fast construction (commit e7df071, group
#: expansion by Torch-Pruning 1.6.1's own get_pruning_group). A change that alters a
#: graph on purpose updates these, and says why.
BEFORE = {
    "bottleneck": "5995d19db3f4f3b0",
    "channel_flip": "fd4c6206567dc0da",
    "channel_mean_gate": "d982d0e41db3c8da",
    "channel_shuffle": "4bba78305aa11406",
    "cifar_resnet20": "d05ad3acac7710c2",
    "convnext": "b8224e27ea08ac37",
    "csp": "a64514c104e89c28",
    "densenet": "c18afc161f7be049",
    "grouped_chain": "98eb89f69c6bbee9",
    "mobilenetv2": "22e860f0392da251",
    "plain_convs_batch1": "2f667c5f9d5465b6",
    "regnet_y": "ca30f1f08c79746a",
    "resnext": "1d42a10d14a0cd37",
    "senet": "5f748e94686af11d",
    "shufflenet": "d002de1939f9c6ba",
    "ssd": "f13c82b39f8876fe",
    "unet": "d2bfddf375d62ef6",
    "vgg": "aae3fc2daeb9f269",
}
#: Models with concatenations, splits, grouped convolutions, channel shuffles and
#: channels-last LayerNorms: what the index maps and the group merge have to get right.
VARIED = [
    "densenet",
    "csp",
    "regnet_y",
    "grouped_chain",
    "shufflenet",
    "convnext",
    "unet",
    "swapped_halves",
]


class SwappedHalves(nn.Module):
    """A conv's channels chunked in two halves and concatenated back swapped: the
    expansion reaches the concatenation twice with different indices."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        lo, hi = self.a(x).chunk(2, dim=1)
        return self.b(torch.cat([hi, lo], dim=1))


def structure(graph: ChannelGraph) -> dict:
    """Everything the graph says about its groups, as plain data."""

    def ref(r):
        return [r.layer, r.kind, r.dim, list(r.index)]

    return {
        "groups": [
            {
                "id": g.id,
                "size": g.size,
                "unit": g.unit,
                "prunable": g.prunable,
                "reason": g.reason,
                "producers": [ref(r) for r in g.producers],
                "consumers": [ref(r) for r in g.consumers],
                "norms": [ref(r) for r in g.norms],
                "others": list(g.others),
            }
            for g in graph.groups
        ],
        "roots": {str(k): [ref(r) for r in v] for k, v in sorted(graph._roots.items())},
        "norm_axis": dict(sorted(graph._norm_axis.items())),
    }


def fingerprint(graph: ChannelGraph) -> str:
    text = json.dumps(structure(graph), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def example(name: str) -> tuple[nn.Module, torch.Tensor]:
    if name == "swapped_halves":
        torch.manual_seed(0)
        return SwappedHalves(), torch.randn(2, 3, 8, 8)
    return build(name)


def built(name: str) -> ChannelGraph:
    return ChannelGraph(*example(name))


@pytest.mark.parametrize("name", sorted(ZOO))
def test_graph_is_the_one_built_before(name):
    assert fingerprint(built(name)) == BEFORE[name]


def test_fingerprints_cover_the_zoo():
    assert sorted(BEFORE) == sorted(ZOO)


@pytest.mark.parametrize("name", VARIED)
def test_library_group_expansion_builds_the_same_graph(name, monkeypatch):
    fast = structure(built(name))
    monkeypatch.setattr(pruning_group, "available", lambda: False)
    assert structure(built(name)) == fast


@pytest.mark.parametrize("name", VARIED)
def test_library_index_map_pass_then_ours_builds_the_same_graph(name, monkeypatch):
    # A Torch-Pruning whose build_dependency does not call index_mapping.
    # update_index_mapping as 1.6.1 does: nothing is skipped, its pass runs, and the
    # trace's own pass runs again after it.
    fast = structure(built(name))

    @contextmanager
    def nothing_skipped(graph):
        yield trace._Swap()

    monkeypatch.setattr(trace, "_maps_kept", nothing_skipped)
    assert structure(built(name)) == fast


@pytest.mark.parametrize(
    "name", ["densenet", "csp", "regnet_y", "shufflenet", "convnext", "swapped_halves"]
)
def test_pruning_group_equals_the_library_item_by_item(name):
    model, x = example(name)
    dg, _ = trace.trace(model.eval(), (x,))
    roots = [m for m in dg.module2node if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert roots
    for module in roots:
        pruner = dg.get_pruner_of_module(module)
        idxs = list(range(pruner.get_out_channels(module)))
        ours = pruning_group.pruning_group(dg, module, pruner.prune_out_channels, idxs)
        with trace._maps_kept(dg):  # the maps the build computed, as ours uses
            theirs = tp.DependencyGraph.get_pruning_group(
                dg, module, pruner.prune_out_channels, idxs
            )
        assert len(ours.items) == len(theirs.items)
        for a, b in zip(ours.items, theirs.items):
            assert a.dep.target is b.dep.target and a.dep.handler == b.dep.handler
            assert a.dep.source is b.dep.source and a.dep.trigger == b.dep.trigger
            assert a.idxs == b.idxs and a.root_idxs == b.root_idxs


def test_build_avoids_the_quadratic_library_paths(monkeypatch):
    """No scan of the whole group per dependency, no pass over every index map per
    group: what made swin_v2_s take 46 s."""

    def forbidden(*args, **kwargs):
        raise AssertionError("quadratic Torch-Pruning path taken")

    monkeypatch.setattr(tp.dependency.group.Group, "has_pruning_op", forbidden)
    monkeypatch.setattr(tp.dependency.group.Group, "add_and_merge", forbidden)
    monkeypatch.setattr(tp.dependency.index_mapping, "update_index_mapping", forbidden)
    graph = built("densenet")
    assert graph.prunable


def test_build_runs_on_one_thread_without_the_collector_and_restores_both(monkeypatch):
    seen = []
    real = trace.trace

    def recording(*args):
        seen.append((torch.get_num_threads(), gc.isenabled()))
        return real(*args)

    monkeypatch.setattr(trace, "trace", recording)
    torch.set_num_threads(2)
    before = torch.get_num_threads()
    try:
        built("convnext")
        assert seen == [(1, False)]
        assert gc.isenabled()
        assert torch.get_num_threads() == before
    finally:
        torch.set_num_threads(before)
