"""Stage ch4 'moe': the mixture of experts against a dense loop that runs every expert on every
token, routing to exactly top_k experts, no Python loop over tokens, the Switch Transformer
load-balancing loss against its closed form, and Mixtral: a Llama with MoE blocks against the
forward pass written here, through the KV cache, and loaded from a Mixtral folder written here."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from grader.tree import load
from tests.ch4 import oracles
from tests.helpers import Mistake, check, check_close, check_equal, check_raises

moe = load("ch4.moe")
llama = load("ch4.llama")
safetensors_io = load("ch3.safetensors_io")

WHERE = "ch4/moe.py, MoE.forward"
INIT = "ch4/moe.py, MoE.__init__"
DIM, HIDDEN, E, K = 16, 24, 4, 2
MIXTRAL = oracles.hf_config("MixtralForCausalLM")

SOFTMAX_ALL = (
    "expert weights taken from a softmax over all the experts (not renormalised over the "
    "chosen ones)"
)
SOFTMAX_ALL_FIX = "softmax over the top_k chosen logits only, so each token's weights sum to 1"


def routed_inputs(n_tokens: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens (n, DIM) and a router (E, DIM) whose logits are clear of near-ties.

    The router reads the first E features, scaled by 2; those features are a random order of
    0, 1, ..., E-1 plus a little noise, so every token's logits differ by about 2 between ranks:
    top-k can never flip under rounding, whatever order the tree computes in."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_tokens, DIM, generator=g)
    ranks = torch.stack([torch.randperm(E, generator=g) for _ in range(n_tokens)]).float()
    x[:, :E] = ranks + 0.1 * torch.rand(n_tokens, E, generator=g)
    gate = torch.zeros(E, DIM)
    gate[:, :E] = 2 * torch.eye(E)
    return x, gate


def expert_weights(seed: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(HIDDEN, DIM, generator=g) / 4,
            torch.randn(HIDDEN, DIM, generator=g) / 4,
            torch.randn(DIM, HIDDEN, generator=g) / 5,
        )
        for _ in range(E)
    ]


def build(gate: torch.Tensor, experts) -> nn.Module:
    """The tree's MoE holding the oracle's router and experts."""
    layer = moe.MoE(DIM, HIDDEN, E, K)
    with torch.no_grad():
        layer.gate.weight.copy_(gate)
        for ours, (w_gate, w_up, w_down) in zip(layer.experts, experts, strict=True):
            ours.gate_proj.weight.copy_(w_gate)
            ours.up_proj.weight.copy_(w_up)
            ours.down_proj.weight.copy_(w_down)
    return layer


def unpack(result: object) -> tuple[torch.Tensor, torch.Tensor]:
    check(
        isinstance(result, tuple) and len(result) == 2,
        f"MoE.forward should return the pair (y, aux_loss), got {type(result).__name__}. Look at "
        f"{WHERE}.",
    )
    return result


def aux_closed_form(
    x: torch.Tensor, gate: torch.Tensor, *, per_token: bool = False, chosen_probs: bool = False
) -> torch.Tensor:
    """E * sum_e f_e P_e. Mistakes: ``per_token`` takes f_e as a share of the tokens (k times
    too large), ``chosen_probs`` takes P_e from the softmax over the chosen experts only."""
    logits = x @ gate.T  # (N, E)
    top = logits.topk(K, dim=-1)
    counts = torch.zeros(E).index_add_(0, top.indices.flatten(), torch.ones(top.indices.numel()))
    fraction = counts / (x.size(0) if per_token else top.indices.numel())
    if chosen_probs:
        probs = torch.zeros_like(logits).scatter(-1, top.indices, torch.softmax(top.values, -1))
    else:
        probs = torch.softmax(logits, dim=-1)
    return E * (fraction * probs.mean(0)).sum()


def unweighted(x: torch.Tensor, gate: torch.Tensor, experts) -> torch.Tensor:
    """The chosen experts' outputs added without their routing weights (a mistake)."""
    chosen = F.linear(x, gate).topk(K, dim=-1).indices
    used = [(chosen == e).any(-1, keepdim=True) for e in range(E)]
    return sum(u * oracles.swiglu(x, *w) for u, w in zip(used, experts, strict=True))


# -- structure ------------------------------------------------------------------------------------


def test_moe_layers():
    """MoE has a router gate = Linear(dim, n_experts, bias=False) and n_experts SwiGLU experts."""
    layer = moe.MoE(DIM, HIDDEN, E, K)
    gate = getattr(layer, "gate", None)
    check(
        isinstance(gate, nn.Linear) and tuple(gate.weight.shape) == (E, DIM) and gate.bias is None,
        f"MoE.gate should be nn.Linear({DIM}, {E}, bias=False), got {gate}. Look at {INIT}.",
    )
    experts = getattr(layer, "experts", None)
    check(
        isinstance(experts, nn.ModuleList) and len(experts) == E,
        f"MoE.experts should be an nn.ModuleList of {E} experts, got {type(experts).__name__}. "
        f"Look at {INIT}.",
    )
    check_equal(
        tuple(experts[0].up_proj.weight.shape),
        (HIDDEN, DIM),
        "an expert's up_proj weight shape (a SwiGLU(dim, hidden_dim))",
        INIT,
    )
    with check_raises(ValueError, "MoE(16, 24, n_experts=4, top_k=5)", INIT):
        moe.MoE(DIM, HIDDEN, E, 5)


# -- routing --------------------------------------------------------------------------------------


def test_moe_equals_a_dense_loop_over_experts():
    """y equals every expert run on every token, weighted by softmax over the chosen logits."""
    x, gate = routed_inputs(24, seed=1)
    experts = expert_weights(2)
    x = x.view(2, 12, DIM)
    layer = build(gate, experts)
    with torch.no_grad():
        y, _ = unpack(layer(x))
    mistakes = [
        Mistake(
            SOFTMAX_ALL,
            SOFTMAX_ALL_FIX,
            oracles.moe_dense(x, gate, experts, K, softmax_over_all=True),
        ),
        Mistake(
            "the top-1 expert only",
            f"add the outputs of all top_k={K} experts",
            oracles.moe_dense(x, gate, experts, 1),
        ),
        Mistake(
            "an unweighted sum of the chosen experts' outputs",
            "multiply each expert's output by its routing weight",
            unweighted(x, gate, experts),
        ),
    ]
    check_close(
        y,
        oracles.moe_dense(x, gate, experts, K),
        "the MoE's output",
        WHERE,
        mistakes=mistakes,
        hint="weights = softmax(top-k router logits); y = sum of weight * expert(x) over the "
        "chosen experts",
    )


class _Recorder:
    """Counts the tokens each expert receives, through forward hooks."""

    def __init__(self, layer: nn.Module) -> None:
        self.seen = [0] * E
        for e, expert in enumerate(layer.experts):
            expert.register_forward_hook(self._hook(e))

    def _hook(self, e: int):
        def hook(module, args, output):
            self.seen[e] += args[0].reshape(-1, DIM).size(0)

        return hook


def test_tokens_go_to_exactly_top_k_experts():
    """Each expert runs on exactly the tokens that chose it: top_k experts per token, no more."""
    x, gate = routed_inputs(40, seed=3)
    layer = build(gate, expert_weights(4))
    recorder = _Recorder(layer)
    with torch.no_grad():
        unpack(layer(x))
    chosen = F.linear(x, gate).topk(K, dim=-1).indices
    expected = [int((chosen == e).sum()) for e in range(E)]
    check_equal(
        recorder.seen,
        expected,
        "the number of tokens each expert ran on",
        f"{WHERE} (run an expert only on the tokens that chose it)",
    )


class _CountCalls(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        return func(*args, **(kwargs or {}))


def test_moe_is_batched():
    """The number of tensor operations does not grow with the number of tokens."""
    counts = {}
    for n in (16, 128):
        x, gate = routed_inputs(n, seed=5)
        layer = build(gate, expert_weights(6))
        with torch.no_grad(), _CountCalls() as counter:
            unpack(layer(x))
        counts[n] = counter.calls
    check(
        counts[128] <= counts[16],
        f"forward ran {counts[16]} torch operations on 16 tokens but {counts[128]} on 128: "
        f"loop over the experts, not over the tokens. Look at {WHERE}.",
    )


# -- the load-balancing loss ----------------------------------------------------------------------


def test_aux_loss_closed_form():
    """aux_loss = n_experts * sum_e f_e * P_e (f: share of the routed choices, P: mean probability)."""
    x, gate = routed_inputs(30, seed=7)
    gate = gate + 0.3 * torch.randn(E, DIM, generator=torch.Generator().manual_seed(8))
    layer = build(gate, expert_weights(9))
    with torch.no_grad():
        _, aux = unpack(layer(x))
    check(
        isinstance(aux, torch.Tensor) and aux.dim() == 0,
        f"aux_loss should be a 0-d tensor, got {aux!r}. Look at {WHERE}.",
    )
    mistakes = [
        Mistake(
            "a load-balancing loss with f_e as a share of the tokens (k times too large)",
            "divide the counts by the number of (token, slot) choices, N * top_k",
            aux_closed_form(x, gate, per_token=True),
        ),
        Mistake(
            "a load-balancing loss with P_e from the softmax over the chosen experts only",
            "P_e is the mean of softmax(router logits) over ALL experts",
            aux_closed_form(x, gate, chosen_probs=True),
        ),
    ]
    check_close(
        aux,
        aux_closed_form(x, gate),
        "the load-balancing loss",
        WHERE,
        mistakes=mistakes,
        hint="f_e: fraction of the N * top_k routing choices that went to e; P_e: mean over "
        "tokens of the softmax over all experts",
    )


def test_aux_loss_is_one_for_a_uniform_router():
    """A router that scores every expert alike gives aux_loss 1; routing everything to one more."""
    x, _ = routed_inputs(20, seed=10)
    layer = build(torch.zeros(E, DIM), expert_weights(11))
    with torch.no_grad():
        _, aux = unpack(layer(x))
    check_close(aux, torch.tensor(1.0), "the loss of a uniform router", WHERE)
    skewed = torch.zeros(E, DIM)
    skewed[0, E] = 50.0  # expert 0 wins for every token with x[:, E] > 0 ...
    x[:, E] = x[:, E].abs() + 0.1
    layer = build(skewed, expert_weights(11))
    with torch.no_grad():
        _, aux = unpack(layer(x))
    check(
        float(aux) > 1.2,
        f"a router that sends every token to expert 0 should be penalised (aux_loss well above "
        f"1), got {float(aux):.4f}. Look at {WHERE}.",
    )


def test_gradients_reach_the_router_and_the_chosen_experts():
    """The loss trains the router (through the weights and aux_loss) and every expert used."""
    x, gate = routed_inputs(32, seed=12)
    layer = build(gate + 0.1, expert_weights(13))
    y, aux = unpack(layer(x))
    (y.pow(2).mean() + 0.01 * aux).backward()
    for name, p in layer.named_parameters():
        check(
            p.grad is not None and bool(torch.isfinite(p.grad).all()) and p.grad.abs().sum() > 0,
            f"{name} got no gradient (or a zero or NaN one). Look at {WHERE}.",
        )


# -- Mixtral --------------------------------------------------------------------------------------


def test_mixtral_folder_loads_and_matches(tmp_path):
    """A Mixtral folder (written here) loads, and its logits equal the forward pass written here."""
    sd = oracles.hf_state_dict(MIXTRAL, seed=14)
    idx = torch.randint(
        0, MIXTRAL["vocab_size"], (2, 20), generator=torch.Generator().manual_seed(15)
    )
    expected = oracles.forward(sd, MIXTRAL, idx)
    oracles.write_folder(tmp_path, sd, MIXTRAL, safetensors_io.save_file, shards=2)
    model = llama.Llama.load_hf(tmp_path)
    check(
        isinstance(model.layers[0].mlp, moe.MoE),
        "a config with n_experts > 0 should give every block a MoE as its mlp. Look at "
        "ch4/llama.py, Block.__init__.",
    )
    with torch.no_grad():
        got, _ = model(idx)
        cache = model.new_cache(2, 20)
        steps = [model(idx[:, :12], cache=cache)[0]]
        for t in range(12, 20):
            steps.append(model(idx[:, t : t + 1], start_pos=t, cache=cache)[0])
    check_close(got, expected, "the Mixtral logits", WHERE, atol=1e-4)
    check_close(
        torch.cat(steps, 1), got, "the Mixtral logits through the KV cache", WHERE, atol=1e-5
    )


def test_training_loss_adds_the_aux_loss():
    """With targets, a MoE model's loss is the cross-entropy plus router_aux_loss_coef * sum of aux."""
    sd = oracles.hf_state_dict(MIXTRAL, seed=16)
    idx = torch.randint(
        0, MIXTRAL["vocab_size"], (2, 10), generator=torch.Generator().manual_seed(17)
    )
    model = llama.Llama.from_hf(sd, MIXTRAL | {"router_aux_loss_coef": 0.5})
    auxes = []
    for block in model.layers:
        block.mlp.register_forward_hook(lambda m, a, out: auxes.append(out[1].detach()))
    with torch.no_grad():
        logits, loss = model(idx, idx)
    expected = F.cross_entropy(logits.view(-1, logits.size(-1)), idx.view(-1)) + 0.5 * sum(auxes)
    check_close(
        loss,
        expected,
        "the loss of a MoE model",
        "ch4/llama.py, Llama.forward",
        hint="add config.router_aux_loss_coef times the sum of the blocks' aux losses",
    )
