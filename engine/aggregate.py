"""Pure aggregation of engine records for the panels (Qt-free, tested without a display).

The bar chart shows one bar per transformer block or other top-level layer. Every ``at_peak``
entry is *exclusive* (see ``engine.results``), so a bar is the sum of its root's own ``at_peak``
and that of all its descendants (found through ``LayerStats.parent``), with no double counting.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from .results import CATEGORIES, LayerStats, Totals

UNATTRIBUTED = "unattributed"
PEAK_SOURCES = {"cuda_allocator": "CUDA allocator", "tensor_accounting": "tensor accounting",
                "fake_tensor_accounting": "estimate: tensor accounting on fake tensors"}


@dataclass
class LayerGroup:
    """One bar: a root layer and the ``at_peak`` bytes of it and its descendants, by category."""

    name: str
    kind: str
    members: list[str] = field(default_factory=list)
    by_category: dict[str, int] = field(default_factory=dict)
    own_only: bool = False  # a container (e.g. the model root): only its own exclusive bytes

    @property
    def total_bytes(self) -> int:
        return sum(self.by_category.values())


def _ancestors(name: str, by_name: dict[str, LayerStats]) -> list[str]:
    """Tracked ancestors of ``name``, nearest first (stops at an untracked parent or a cycle)."""
    chain: list[str] = []
    seen = {name}
    parent = by_name[name].parent
    while parent is not None and parent in by_name and parent not in seen:
        chain.append(parent)
        seen.add(parent)
        parent = by_name[parent].parent
    return chain


def group_layers(layers: Sequence[LayerStats]) -> list[LayerGroup]:
    """Group layers into bars, in the order their roots appear.

    * A ``block`` is a bar with all its descendants.
    * A layer with no block below it and no bar above it (embedding, final norm, head, or any
      top-level layer of a model without blocks) is a bar with its descendants.
    * A container that holds blocks (the model root, a ``ModuleList`` wrapper) is not a bar; if it
      has exclusive ``at_peak`` bytes of its own they become a bar of their own.
    """
    by_name = {layer.name: layer for layer in layers}
    ancestors = {layer.name: _ancestors(layer.name, by_name) for layer in layers}
    contains_block: set[str] = set()
    for layer in layers:
        if layer.kind == "block":
            contains_block.update(ancestors[layer.name])

    groups: dict[str, LayerGroup] = {}
    for layer in layers:
        # The outermost ancestor that is itself a bar root (not a container of blocks).
        root = next((a for a in reversed(ancestors[layer.name]) if a not in contains_block), None)
        if root is None:
            if layer.name in contains_block:
                if not layer.at_peak_bytes:
                    continue
                group = groups.setdefault(layer.name, LayerGroup(layer.name, layer.kind,
                                                                 own_only=True))
            else:
                group = groups.setdefault(layer.name, LayerGroup(layer.name, layer.kind))
        else:
            group = groups.get(root)
            if group is None:  # a descendant listed before its root
                group = groups.setdefault(root, LayerGroup(root, by_name[root].kind))
        group.members.append(layer.name)
        for category, value in layer.at_peak.items():
            if value:
                group.by_category[category] = group.by_category.get(category, 0) + int(value)
    # Keep the layer order of the roots.
    order = {layer.name: i for i, layer in enumerate(layers)}
    return sorted(groups.values(), key=lambda g: order[g.name])


def category_order(groups: Iterable[LayerGroup]) -> list[str]:
    """The engine's categories first, then any category it added later, in first-seen order."""
    order = list(CATEGORIES)
    for group in groups:
        for category in group.by_category:
            if category not in order:
                order.append(category)
    return order


def reconciliation_line(totals: Totals, fmt) -> str:
    """``peak X = attributed Y + unattributed Z (source)`` with ``fmt`` formatting bytes."""
    source = PEAK_SOURCES.get(totals.peak_source, totals.peak_source) or "unknown source"
    return (f"peak {fmt(totals.peak_bytes)} = attributed {fmt(totals.attributed_bytes)} "
            f"+ unattributed {fmt(totals.unattributed_bytes)} ({source})")


def outline_from_layers(groups: Sequence[LayerGroup], per_layer: dict[str, int | None]
                        ) -> list[int | None]:
    """Another measurement's bytes per bar of ``groups``, from its per-layer at-peak bytes (e.g.
    ``RunResult.baseline["layers"][name]["at_peak_bytes"]``, the unoptimized model measured in
    the same run). A bar is ``None`` when none of its members was measured there."""
    out: list[int | None] = []
    for group in groups:
        values = [per_layer.get(name) for name in group.members]
        known = [int(v) for v in values if v is not None]
        out.append(sum(known) if known else None)
    return out


def outline_from_run(groups: Sequence[LayerGroup], layers: Sequence[LayerStats]
                     ) -> list[int | None]:
    """Another run's bytes per bar of ``groups``, its bars matched by name (``None``: absent)."""
    theirs = {g.name: g.total_bytes for g in group_layers(layers)}
    return [theirs.get(group.name) for group in groups]
