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


def _real_trace_only(monkeypatch):
    monkeypatch.setattr(trace, "meta_worthwhile", lambda *args: False)


@pytest.fixture
def meta_always(monkeypatch):
    """The meta trace for every model (by default only for large ones)."""
    monkeypatch.setattr(trace, "meta_worthwhile", lambda *args: True)


def _without_others(s: dict) -> dict:
    return {**s, "groups": [{**g, "others": None} for g in s["groups"]]}


@pytest.mark.parametrize("name", sorted(set(ZOO) | {"swapped_halves"}))
def test_meta_trace_builds_the_same_graph(name, monkeypatch, meta_always):
    used = []
    real = trace._trace_on_meta

    def spy(*args):
        out = real(*args)
        used.append(True)
        return out

    monkeypatch.setattr(trace, "_trace_on_meta", spy)
    meta = structure(built(name))
    assert used == [True], "the meta trace fell back"
    _real_trace_only(monkeypatch)
    plain = structure(built(name))
    # convnext: the meta record lacks the AsStrided node CPU's layer_norm kernel adds
    # between the global pool and the head norm, an op listed in a group's ``others``
    # (the torchvision ViTs likewise); every group, member, index and unit is the same.
    if name == "convnext":
        assert meta != plain and _without_others(meta) == _without_others(plain)
    else:
        assert meta == plain


def test_meta_trace_leaves_the_real_parameters_in_the_model_and_graph(meta_always):
    model, x = example("convnext")  # its layer scale is a parameter outside any layer
    params = {n: p for n, p in model.named_parameters()}
    values = {n: p.detach().clone() for n, p in params.items()}
    buffers = {n: b for n, b in model.named_buffers()}
    graph = ChannelGraph(model, x)
    assert {n: p for n, p in model.named_parameters()} == params
    assert {n: b for n, b in model.named_buffers()} == buffers
    assert all(torch.equal(p, values[n]) for n, p in params.items())
    dg = graph._dg
    keys = [k for k in dg.module2node if torch.is_tensor(k)]
    assert keys and all(any(k is p for p in params.values()) for k in keys)
    assert all(not n.module.is_meta for n in dg.module2node.values() if torch.is_tensor(n.module))
    assert all(not u.parameters.is_meta for u in dg.unwrapped_parameters)
    gamma = model.stage1.gamma
    plan = {g.id: list(range(g.size // 2)) for g in graph.prunable}
    report = graph.check(plan)
    assert report.passed, report
    slim = graph.remove(plan)
    assert not any(p.is_meta for p in slim.parameters())
    assert gamma.shape[0] == 16 and not gamma.is_meta
    assert slim.stage1.gamma.shape[0] == slim.stage1.dw.out_channels < 16


class _ValueBranch(nn.Module):
    """Control flow on a value: the meta device cannot decide it."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.a(x)
        if y.sum() > -1e9:
            y = torch.relu(y)
        return self.b(y)


class _CachesOnForward(nn.Module):
    """Keeps a tensor on itself during the forward pass (anchors, masks...)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 4, 1)
        self.kept = None

    def forward(self, x):
        y = self.a(x)
        if self.kept is None or self.kept.shape != y.shape[1:]:
            self.kept = torch.ones_like(y[0])
        return self.b(y * self.kept)


@pytest.mark.parametrize("cls", [_ValueBranch, _CachesOnForward])
def test_a_model_the_meta_device_cannot_run_is_traced_on_its_own(cls, monkeypatch, meta_always):
    torch.manual_seed(0)
    model, x = cls().eval(), torch.randn(2, 3, 8, 8)
    graph = ChannelGraph(model, x)
    assert [g.size for g in graph.prunable] == [8]
    assert not any(t.is_meta for t in vars(model).values() if torch.is_tensor(t))
    if cls is _CachesOnForward:
        assert model.kept is not None and not model.kept.is_meta
    _real_trace_only(monkeypatch)
    assert structure(ChannelGraph(model, x)) == structure(graph)
    assert graph.check({graph.prunable[0].id: [0, 2, 4, 6]}).passed


def test_meta_trace_is_for_large_models_and_inputs():
    small, x = example("convnext")
    assert not trace.meta_worthwhile(small, (x,))
    conv = nn.Conv2d(512, 512, 3)  # 2.4M parameters: worth it at batch 256 x 224 x 224
    assert not trace.meta_worthwhile(conv, (torch.empty(1, 512, 224, 224, device="meta"),))
    assert trace.meta_worthwhile(conv, (torch.empty(256, 512, 224, 224, device="meta"),))
    big = nn.Linear(10_000, 10_000)  # 100M parameters
    assert trace.meta_worthwhile(big, (torch.randn(1, 10_000),))
