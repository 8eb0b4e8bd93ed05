"""Engine figures against ground truth computed independently of the instrumentation."""

from __future__ import annotations

import pytest
import torch

from engine.config import RunConfig
from engine.instrument import MemoryProbe
from engine.layers import select_layers
from engine.models import load_model
from engine.results import CATEGORIES
from engine.runner import execute
from engine import memtracker

from .helpers import Collector, nbytes, tiny


def _run(**kw):
    events = Collector()
    result = execute(tiny(**kw), events)
    assert result is not None, events.failed
    return result


@pytest.fixture(scope="module")
def forward_run():
    return _run(workload="forward", seq=48, batch=2)


@pytest.fixture(scope="module")
def generate_run():
    return _run(workload="generate", seq=20, new_tokens=7, batch=3)


@pytest.fixture(scope="module")
def train_run():
    return _run(workload="train", seq=24, batch=2)


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-gpt2", "tiny-bert"])
def test_weights_equal_numel_times_element_size(preset):
    result = _run(model=f"preset:{preset}", workload="forward", seq=16)
    model = load_model(RunConfig(model=f"preset:{preset}")).model
    truth = sum(nbytes(p) for p in model.parameters()) + sum(nbytes(b) for b in model.buffers())
    assert sum(layer.weights_bytes for layer in result.layers) == truth
    assert result.totals.model_weights_bytes == truth
    assert result.totals.weights_bytes == truth  # all weights are live at the peak
    assert result.totals.parameters == sum(p.numel() for p in model.parameters())
    # per layer: each module's own (exclusive) parameters
    for t in select_layers(model):
        if t.kind in ("attention", "mlp"):
            own = sum(nbytes(p) for p in t.module.parameters())
            assert result.layer(t.name).weights_bytes == own


@pytest.mark.parametrize("fixture", ["forward_run", "generate_run", "train_run"])
def test_reconciliation(fixture, request):
    result = request.getfixturevalue(fixture)
    t = result.totals
    assert t.peak_bytes > 0
    assert t.attributed_bytes + t.unattributed_bytes == t.peak_bytes
    assert t.attributed_bytes == sum(layer.at_peak_bytes for layer in result.layers)
    by_cat = {c: sum(layer.at_peak.get(c, 0) for layer in result.layers) for c in CATEGORIES}
    assert sum(by_cat.values()) == t.attributed_bytes
    assert t.unattributed_bytes == sum(t.unattributed_detail.values())
    assert t.unattributed_bytes >= 0
    # JSON round trip keeps the reconciliation
    from engine.results import RunResult

    again = RunResult.from_dict(result.to_dict())
    assert again.totals.reconciles() and again.totals == t


def test_forward_activation_bytes(forward_run):
    hidden = 64
    for layer in forward_run.layers:
        if layer.kind == "block":
            assert layer.activation_bytes == 2 * 48 * hidden * 4  # batch·seq·hidden·fp32
    assert forward_run.layer("lm_head").activation_bytes == 2 * 48 * 256 * 4  # logits


def test_peak_matches_memtracker():
    """Our CPU peak against PyTorch's MemTracker, an independent implementation (within 1%)."""
    loaded = load_model(RunConfig(model="preset:tiny-llama"))
    model = loaded.model
    ids = torch.randint(0, 256, (2, 64))
    model(input_ids=ids)  # warm caches that are created lazily

    def fwd():
        with torch.no_grad():
            return model(input_ids=ids, use_cache=False).logits.sum()

    theirs = memtracker.peak_bytes(fwd, model, ids)["Total"]
    probe = MemoryProbe(model, select_layers(model), count_flops=False)
    with probe:
        probe.track_input(ids)
        fwd()
    assert abs(probe.acc.peak - theirs) <= 0.01 * theirs, (probe.acc.peak, theirs)


def test_kv_cache_bytes_formula(generate_run):
    r = generate_run
    info = r.model_info
    positions = 20 + 7 - 1  # prompt + every generated token but the last is fed back
    assert r.generation["cached_positions"] == positions
    expected_layer = 2 * 3 * info["num_key_value_heads"] * info["head_dim"] * positions * 4
    attn = [layer for layer in r.layers if layer.kind == "attention"]
    assert len(attn) == info["num_layers"]
    assert all(layer.kv_cache_bytes == expected_layer for layer in attn)
    assert r.generation["kv_cache_bytes"] == info["num_layers"] * expected_layer
    steps = r.generation["kv_bytes_per_step"]
    assert len(steps) == 7
    per_pos = 2 * info["num_layers"] * 3 * info["num_key_value_heads"] * info["head_dim"] * 4
    assert steps[0] == 20 * per_pos
    assert all(b - a == per_pos for a, b in zip(steps, steps[1:]))
    assert r.totals.kv_cache_bytes > 0  # the cache is live at the peak
    assert len(r.generation["decode_ms_per_step"]) == 6


def test_saved_for_backward_matches_autograd_graph():
    """Bytes our pack hook counted equal the distinct storages the autograd graph holds."""
    model = load_model(RunConfig(model="preset:tiny-llama")).model
    model.train()
    ids = torch.randint(0, 256, (2, 40))
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    probe = MemoryProbe(model, select_layers(model), training=True, count_flops=False)
    with probe:
        probe.phase = "forward"
        loss = model(input_ids=ids, labels=ids).loss
        ours = sum(probe.saved_bytes.values())
    seen: set[int] = set()
    total = 0
    stack, visited = [loss.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in visited:
            continue
        visited.add(node)
        for attr in dir(node):
            if not attr.startswith("_saved_"):
                continue
            try:
                value = getattr(node, attr)
            except RuntimeError:
                continue
            for t in value if isinstance(value, (tuple, list)) else [value]:
                if isinstance(t, torch.Tensor):
                    st = t.untyped_storage()
                    if st.data_ptr() in params or st.data_ptr() in seen or not st.nbytes():
                        continue
                    seen.add(st.data_ptr())
                    total += st.nbytes()
        stack.extend(fn for fn, _ in node.next_functions)
    assert total > 0
    assert abs(ours - total) <= 0.01 * total, (ours, total)


def test_training_counts_each_category(train_run):
    r = train_run
    n_param_bytes = r.totals.parameters * 4  # fp32; buffers get no gradient
    assert r.training["gradient_bytes"] == n_param_bytes
    # AdamW: exp_avg and exp_avg_sq per parameter, plus one scalar step count per tensor
    n_tensors = 21  # tiny-llama: embeddings, 2 x 9 per block, final norm, lm_head
    state = r.training["optimizer_state_bytes"]
    assert 2 * n_param_bytes < state <= 2 * n_param_bytes + 8 * n_tensors
    assert r.training["saved_for_backward_bytes"] > 0
    assert sum(layer.saved_for_backward_bytes for layer in r.layers) > 0
    # all of it is live at the peak; the scalar step counts are made outside the dispatcher
    # (torch.tensor from a Python number) and land in unattributed
    assert state - 8 * n_tensors <= r.totals.optimizer_state_bytes <= state
    assert r.training["loss"] == pytest.approx(r.training["loss"])  # a number, not NaN
    for phase in ("forward_peak_bytes", "backward_peak_bytes", "optimizer_peak_bytes"):
        assert r.training[phase] > n_param_bytes


def test_the_training_loss_is_a_row_of_its_own():
    """Cross-entropy keeps a float32 log-softmax of the logits for the backward, which makes two
    gradients of that size: the loss's own bytes, which used to be left unattributed."""
    r = _run(workload="train", seq=128, batch=4)
    loss = r.layer("(loss)")
    assert loss is not None and loss.kind == "loss" and loss.weights_bytes == 0
    logits_fp32 = 4 * 128 * r.model_info["vocab_size"] * 4
    assert loss.saved_for_backward_bytes >= logits_fp32
    assert r.training["backward_peak_bytes"] == r.totals.peak_bytes  # the peak is in the backward
    assert loss.at_peak["activations"] >= logits_fp32
    assert loss.at_peak["temporaries"] >= 2 * logits_fp32
    # left unattributed: the input ids and the backward's seed (one scalar), nothing of the loss
    assert r.totals.unattributed_detail == {"input ids": 4 * 128 * 8, "untracked temporaries": 4}
    assert loss.latency_ms is not None and loss.latency_ms > 0


def test_a_wrapper_of_a_model_with_a_loss_row_reuses_its_scope():
    pytest.importorskip("peft")
    from peft import LoraConfig, get_peft_model

    model = load_model(RunConfig(model="preset:tiny-llama")).model
    inner = select_layers(model, loss=True)[-1].module
    wrapped = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    assert select_layers(wrapped, loss=True)[-1].module is inner  # not a scope around a scope


def test_a_loss_computed_outside_loss_function_is_said_to_be_unattributed(tmp_path):
    """XLNet computes its loss with its own CrossEntropyLoss: no (loss) row, and it says so."""
    import json

    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_type": "xlnet", "architectures": ["XLNetLMHeadModel"],
                                  "d_model": 64, "n_layer": 2, "n_head": 4, "d_inner": 128,
                                  "vocab_size": 256}))
    r = _run(model=str(config), workload="train", seq=32, batch=1)
    assert all(layer.name != "(loss)" for layer in r.layers)
    assert any("without transformers' loss_function" in w for w in r.warnings)
    assert r.model_info["tracked_modules"] == len(r.layers)


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-bert"])
def test_the_loss_scope_leaves_the_model_and_its_loss_as_they_were(preset):
    from engine import workloads as wl
    from engine.layers import LOSS_ROW

    model = load_model(RunConfig(model=f"preset:{preset}")).model
    names = [n for n, _ in model.named_modules()]
    keys = list(model.state_dict())
    ids = torch.randint(0, 256, (2, 16))
    inputs = wl.Inputs(ids, "test")

    def step_loss() -> float:
        torch.manual_seed(0)
        opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the weights stay
        return wl.train_step(model, inputs, opt, torch.device("cpu")).loss

    before = step_loss()
    tracked = select_layers(model, loss=True)
    assert tracked[-1].name == LOSS_ROW and select_layers(model, loss=True)[-1].module \
        is tracked[-1].module  # installed once
    assert [n for n, _ in model.named_modules()] == names and list(model.state_dict()) == keys
    assert step_loss() == before
    probe = MemoryProbe(model, tracked, training=True, count_flops=False)
    with probe:
        wl.train_step(model, inputs, torch.optim.SGD(model.parameters(), lr=0.0),
                      torch.device("cpu"), probe)
    assert LOSS_ROW in probe.output_bytes  # the loss ran through its row


def test_the_attention_mask_and_position_ids_are_named_in_the_unattributed_rest():
    r = _run(workload="forward", seq=96, batch=2, attention_impl="eager")
    detail = r.totals.unattributed_detail
    mask = detail["attention mask (built outside the layers)"]
    assert mask >= 96 * 96  # at least one boolean seq x seq (transformers 5.24: float32, per row)
    assert detail["input ids"] == 2 * 96 * 8
    assert next(iter(detail)) == "attention mask (built outside the layers)"  # largest first
    assert sum(detail.values()) == r.totals.unattributed_bytes


@pytest.mark.parametrize("preset", ["tiny-bert", "tiny-llama"])
def test_a_block_rises_at_least_as_high_as_any_module_inside_it(preset):
    """A block's transient peak holds those of the modules it calls. BERT's block calls its
    attention first, at the same live total: the two watchers were equal lists, and removing
    the child's by value removed the block's (its transient read 0 B)."""
    result = _run(model=f"preset:{preset}", workload="forward", seq=32)
    rows = {layer.name: layer for layer in result.layers}
    children = [r for r in result.layers if r.parent in rows and rows[r.parent].kind == "block"]
    assert children
    for child in children:
        block = rows[child.parent]
        assert block.transient_peak_bytes >= child.transient_peak_bytes > 0, (
            block.name, block.transient_peak_bytes, child.name, child.transient_peak_bytes)


def test_eager_attention_transient_holds_the_score_matrix():
    r = _run(workload="forward", seq=96, attention_impl="eager")
    heads, seq = r.model_info["num_attention_heads"], 96
    probs = heads * seq * seq * 4
    for layer in r.layers:
        if layer.kind == "attention":
            assert layer.transient_peak_bytes >= probs


def test_flops_match_hand_counts_including_gqa_attention(forward_run):
    r = forward_run
    b, s, hidden, inter, heads, kv_heads, d = 2, 48, 64, 128, 4, 2, 16
    tokens = b * s
    mlp = next(layer for layer in r.layers if layer.kind == "mlp")
    assert mlp.flops == 3 * 2 * tokens * hidden * inter  # gate, up, down projections
    attn = next(layer for layer in r.layers if layer.kind == "attention")
    projections = 2 * tokens * hidden * (2 * heads * d + 2 * kv_heads * d)  # q, o + k, v
    sdpa = 4 * b * heads * s * s * d  # QK^T and PV with K/V broadcast to the query heads
    assert attn.flops == projections + sdpa
    assert attn.flops_complete is True and not r.totals.flops_uncounted_ops
    assert r.totals.flops == sum(layer.flops or 0 for layer in r.layers if layer.depth == 0)


def test_a_failing_flop_formula_is_flagged_not_fatal(monkeypatch):
    from torch.utils import flop_counter

    def broken(*args, **kwargs):
        raise AssertionError("shapes are incompatible")

    broken._get_raw = True
    monkeypatch.setitem(flop_counter.flop_registry, torch.ops.aten.mm, broken)
    result = _run(workload="train", seq=16)
    assert result.totals.reconciles()
    assert any("formula failed" in op for op in result.totals.flops_uncounted_ops)
    assert any(layer.flops_complete is False for layer in result.layers)
    assert any("under-counted" in w for w in result.warnings)
    # A row that holds an incomplete one is incomplete too (a block above its attention).
    rows = {layer.name: layer for layer in result.layers}
    for layer in result.layers:
        if layer.flops_complete is False and layer.parent in rows:
            assert rows[layer.parent].flops_complete is False, (layer.name, layer.parent)


def test_modules_outside_the_model_calling_one_another_keep_the_tracker_sound():
    """transformers >= 5.25 runs functions such as apply_rotary_pos_emb through `kernels`
    modules: a shared instance calls the layer's private one, of the same class, and neither is
    a submodule. The module tracker gives each its own name, so it neither warns nor raises."""
    import warnings

    from engine.instrument import _module_tracker

    class Func(torch.nn.Module):
        def __init__(self, inner=None):
            super().__init__()
            self.__dict__["inner"] = inner  # not a submodule, as in kernels

        def forward(self, x):
            return self.inner(x) if self.inner is not None else x * 2

    private = Func()
    shared = Func(private)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 4)
            self.__dict__["_funcs"] = {"f": private}

        def forward(self, x):
            return shared(self.lin(x))

    net = Net()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with _module_tracker() as tracker:
            net(torch.randn(2, 4, requires_grad=True)).sum().backward()
            names = {tracker._known_modules[m] for m in (shared, private)}
    assert names == {"Func", "Func#2"}
    assert tracker._known_modules[net.lin] == "Net.lin"


def test_attention_maps_are_distributions():
    events = Collector()
    result = execute(tiny(workload="forward", seq=40, attention_maps=True), events)
    assert result is not None
    from engine.events import AttentionMaps

    maps = events.of(AttentionMaps)[0].maps
    assert len(maps) == result.model_info["num_layers"]
    m = torch.from_numpy(maps[0]).float()
    assert m.shape == (4, 40, 40)
    assert torch.allclose(m.sum(-1), torch.ones(4, 40), atol=1e-2)
    assert torch.all(torch.triu(m, diagonal=1) == 0)  # causal
    assert result.attention["captured"] and result.attention["implementation_used"] == "eager"
    assert result.attention["cost"]["forward_ms"] > 0


@pytest.mark.fault(area='load', case='a long attention capture',
                   outcome='stored pooled to at most 256 × 256, rows still distributions')
def test_attention_maps_downsampled_when_long(monkeypatch):
    import engine.attention
    from engine.events import AttentionMaps

    monkeypatch.setattr(engine.attention, "MAX_SIDE", 16)
    events = Collector()
    result = execute(tiny(workload="forward", seq=50, attention_maps=True), events)
    assert result is not None
    assert result.attention["downsampled_from"] == 50
    assert result.attention["stored_side"] == 16
    m = torch.from_numpy(events.of(AttentionMaps)[0].maps[1]).float()
    assert m.shape == (4, 16, 16)
    assert torch.allclose(m.sum(-1), torch.ones(4, 16), atol=1e-2)  # rows stay distributions


def test_timeline_and_overhead_recorded(forward_run):
    r = forward_run
    assert r.timeline["rss_bytes"] and all(v > 0 for v in r.timeline["rss_bytes"])
    assert all(v is None for v in r.timeline["gpu_used_bytes"])  # no GPU: None, never 0
    assert r.totals.instrumentation_overhead is not None and r.totals.instrumentation_overhead > 0
    assert [p["name"] for p in r.phases][:2] == ["prepare", "load"]
    assert all(layer.latency_ms is not None and layer.latency_ms > 0 for layer in r.layers)
    assert r.timing["detailed_overhead"] > 0
    assert r.timing["live_modules"] < r.timing["detailed_modules"] == len(r.layers)
    assert r.environment["libraries"]["torch"] == torch.__version__


def test_recomputation_in_the_backward_is_not_timed():
    """Activation checkpointing runs a block's modules again in the backward: those calls are
    not the forward's time (the attention and MLP rows of checkpointed blocks came to more than
    their block)."""
    from torch.utils.checkpoint import checkpoint

    from engine.instrument import TimingProbe
    from engine.layers import TrackedModule

    inner = torch.nn.Linear(8, 8)

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return checkpoint(self.inner, x, use_reentrant=False).relu()

    block = Block()
    tracked = [TrackedModule("block", "block", None, 0, block),
               TrackedModule("block.inner", "mlp", "block", 1, inner)]
    with TimingProbe(tracked, torch.device("cpu")) as probe:
        block(torch.randn(4, 8, requires_grad=True)).sum().backward()
    assert sorted(name for name, _, _ in probe.spans()) == ["block", "block.inner"]


def test_attention_axis_labels_are_the_prompts_text_in_any_script():
    """Byte-level tokens of a character outside ASCII are labelled with that character and
    their part, not with the tokenizer's byte pieces ('ä¸')."""
    from engine.events import AttentionMaps

    events = Collector()
    prompt = "人工智能 measures memory.\n"
    result = execute(RunConfig(model="demo", workload="forward", prompt=prompt, repeats=1,
                               warmup=0, attention_maps=True), events)
    assert result is not None
    tokens = list(events.of(AttentionMaps)[0].tokens)
    assert tokens[:3] == ["人(1/3)", "人(2/3)", "人(3/3)"]
    assert tokens[9:12] == ["能(1/3)", "能(2/3)", "能(3/3)"]
    assert not any(ch in "".join(tokens) for ch in "äåæ\ufffd")
    assert "".join(tokens[12:]) == " measures memory.\n"  # ASCII tokens are their own text


def test_the_backward_charges_each_allocation_to_the_module_running_it():
    """transformers 5 calls attention with keyword tensors (self_attn(hidden_states=...)), so
    ModTracker never saw an attention layer's backward end: every later allocation of the
    backward (the embedding's gradient, the tied head's) went to whichever attention layer
    the set happened to list first, and compare showed ±3 MiB moving between layers of one
    model run twice. The demo's train peak is in the embedding's backward."""
    # (with a warm-up step first, as by default: the first backward happened to end cleanly)
    result = execute(RunConfig(model="demo", workload="train", seq=64, repeats=1, warmup=1),
                     Collector())
    assert result is not None and result.totals.reconciles()
    rows = {layer.name: layer for layer in result.layers}
    stale = {name: layer.at_peak["temporaries"] for name, layer in rows.items()
             if layer.kind == "attention" and layer.at_peak.get("temporaries")}
    assert not stale, stale
    assert rows["model.embed_tokens"].at_peak.get("temporaries", 0) > 0


def test_a_parameter_the_loss_does_not_reach_has_no_gradient():
    """BERT's pooler gets no gradient under the synthetic loss: its row said 16 KiB of
    gradients (its parameters' size) and the step's total disagreed with the peak's."""
    result = execute(RunConfig(model="preset:tiny-bert", workload="train", seq=16, repeats=1),
                     Collector())
    assert result is not None
    rows = {layer.name: layer for layer in result.layers}
    pooler = next(layer for name, layer in rows.items() if name.endswith("pooler"))
    assert pooler.gradient_bytes == 0 and pooler.optimizer_state_bytes == 0
    assert sum(layer.gradient_bytes or 0 for layer in result.layers) == \
        result.training["gradient_bytes"]
