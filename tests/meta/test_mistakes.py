"""Broken copies of the reference, one likely mistake each, run through their stage's tests.

Each must fail in its own stage, and the first failure (the one the grader shows) must be a
one-line message that names the mistake (the stage tests compute these variants with
``tests.helpers.Mistake``), not only list numbers. A copy is the reference with a few exact text
edits: when the reference changes so that an edit no longer applies, this test says which one to
update.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from grader import manifest
from grader.tree import REPO_ROOT


@dataclass(frozen=True)
class Broken:
    """The reference with ``edits`` (old text, new text, how many times old occurs) in ``file``."""

    name: str
    stage: str  # "ch2.attention"
    file: str  # tree-relative
    edits: tuple[tuple[str, str, int], ...]
    words: str  # what the stage's message must say
    # The first failure's exception: a check's, or a rank's (grader/ranks.py) for a collective
    # that only some ranks make, which fails or hangs instead of computing a wrong value.
    failure: str = "LearnerFailure"


# filter_logits's top-k block, moved after its top-p block by one broken copy
TOP_K = """\
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits[logits < kth] = -math.inf
"""
RETURN = "    return logits\n    # END SOLUTION"

# apply_rope's rotate-half lines, replaced by Meta's interleaved pairs in one broken copy
ROTATE_HALF = """\
    x1, x2 = x.chunk(2, dim=-1)  # (B, nh, T, hd/2) each
    rotated = torch.cat([-x2, x1], dim=-1)  # (B, nh, T, hd)
    return x * c + rotated * s
"""
NEIGHBOUR_PAIRS = """\
    x1, x2 = x[..., 0::2], x[..., 1::2]
    c, s = c[..., : x.size(-1) // 2], s[..., : x.size(-1) // 2]
    return torch.stack([x1 * c - x2 * s, x1 * s + x2 * c], dim=-1).flatten(-2)
"""

BROKEN = (
    Broken(
        "no_scale",
        "ch2.attention",
        "ch2/attention.py",
        (("q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))", "q @ k.transpose(-2, -1)", 1),),
        "came out as softmax(QK^T) without the 1/sqrt(d_k) scale",
    ),
    Broken(
        "softmax_over_queries",
        "ch2.attention",
        "ch2/attention.py",
        (("torch.softmax(scores, dim=-1)", "torch.softmax(scores, dim=-2)", 1),),
        "came out as a softmax over the queries (dim=-2)",
    ),
    Broken(
        "inverted_mask",
        "ch2.attention",
        "ch2/attention.py",
        (("masked_fill(~mask,", "masked_fill(mask,", 2),),
        "came out as attention with the mask inverted",
    ),
    Broken(
        "heads_split_without_transpose",
        "ch2.attention",
        "ch2/attention.py",
        (
            (".view(B, T_q, h, hs).transpose(1, 2)", ".view(B, h, T_q, hs)", 1),
            (".view(B, T_k, h, hs).transpose(1, 2)", ".view(B, h, T_k, hs)", 2),
        ),
        "came out as heads split without a transpose",
    ),
    Broken(
        "heads_merged_without_transpose",
        "ch2.attention",
        "ch2/attention.py",
        (("out.transpose(1, 2).reshape(B, T_q", "out.reshape(B, T_q", 1),),
        "came out as heads put back without a transpose",
    ),
    Broken(
        "dropout_in_eval",
        "ch2.attention",
        "ch2/attention.py",
        (("self.dropout if self.training else 0.0", "self.dropout", 1),),
        "dropout must be off in eval",
    ),
    Broken(
        "layernorm_unbiased_variance",
        "ch2.block",
        "ch2/block.py",
        (("x.var(dim=-1, keepdim=True, unbiased=False)", "x.var(dim=-1, keepdim=True)", 1),),
        "came out as LayerNorm with the unbiased variance",
    ),
    Broken(
        "pre_and_post_ln_swapped",
        "ch2.block",
        "ch2/block.py",
        (("if self.norm_first:", "if not self.norm_first:", 2),),
        "came out as the pre-LN block",
    ),
    Broken(
        "decoder_without_causal_mask",
        "ch2.transformer",
        "ch2/transformer.py",
        (("causal_mask(T, tgt.device) & padding_mask(", "padding_mask(", 1),),
        "came out as a decoder whose self-attention has no causal mask",
    ),
    Broken(
        "gpt_attention_without_causal_mask",
        "ch3.gpt",
        "ch3/gpt.py",
        (("is_causal=True", "is_causal=False", 1),),
        "came out as attention without the causal mask",
    ),
    Broken(
        "gpt_heads_split_without_transpose",
        "ch3.gpt",
        "ch3/gpt.py",
        (  # reshape: .view of c_attn's split fails loudly, a mistake nobody misses
            (".view(B, T, self.n_head, hs).transpose(1, 2)", ".reshape(B, self.n_head, T, hs)", 3),
        ),
        "came out as heads split without a transpose",
    ),
    Broken(
        "exact_gelu",
        "ch3.gpt",
        "ch3/gpt.py",
        (('self.gelu = nn.GELU(approximate="tanh")', "self.gelu = nn.GELU()", 1),),
        "came out as an MLP with the exact GELU",
    ),
    Broken(
        "lm_head_not_tied",
        "ch3.gpt",
        "ch3/gpt.py",
        (("self.lm_head.weight = self.transformer.wte.weight\n", "\n", 1),),
        "lm_head.weight should be the same Parameter as transformer.wte.weight",
    ),
    Broken(
        "windows_cut_before_the_split",
        "ch3.data",
        "ch3/data.py",
        (
            (
                "    train = TokenWindowDataset(ids[:k], block_size)\n",
                "    everything = TokenWindowDataset(ids, block_size)\n"
                "    train = torch.utils.data.Subset(everything, range(int(len(everything) * 0.9)))\n",
                1,
            ),
        ),
        "came out as windows cut from the whole token stream and then split",
    ),
    Broken(
        "warmup_from_zero",
        "ch3.trainer",
        "ch3/trainer.py",
        (
            (
                "c.learning_rate * (step + 1) / c.warmup_steps",
                "c.learning_rate * step / c.warmup_steps",
                1,
            ),
        ),
        "came out as a warm-up that starts at 0",
    ),
    Broken(
        "lr_never_set",
        "ch3.trainer",
        "ch3/trainer.py",
        (('            group["lr"] = lr\n', "            pass\n", 1),),
        "the schedule is never written into the optimizer",
    ),
    Broken(
        "top_p_before_top_k",
        "ch3.sampling",
        "ch3/sampling.py",
        ((TOP_K, "", 1), (RETURN, TOP_K + RETURN, 1)),
        "came out as top-p applied before top-k",
    ),
    Broken(
        "temperature_after_filtering",
        "ch3.sampling",
        "ch3/sampling.py",
        (
            (
                "filter_logits(logits / temperature, top_k, top_p)",
                "filter_logits(logits, top_k, top_p) / temperature",
                1,
            ),
        ),
        "came out as the temperature applied after top-k and top-p",
    ),
    Broken(
        "rmsnorm_without_float32_upcast",
        "ch4.norm_rope",
        "ch4/layers.py",
        (("x32 = x.float()", "x32 = x", 1),),
        "came out as RMSNorm computed in float16",
    ),
    Broken(
        "rmsnorm_mean_instead_of_mean_of_squares",
        "ch4.norm_rope",
        "ch4/layers.py",
        (("x32.pow(2).mean(dim=-1", "x32.mean(dim=-1", 1),),
        "the mean of x instead of the mean of its squares",
    ),
    Broken(
        "rmsnorm_centred_like_layernorm",
        "ch4.norm_rope",
        "ch4/layers.py",
        (("x32 = x.float()", "x32 = x.float() - x.float().mean(dim=-1, keepdim=True)", 1),),
        "came out as LayerNorm's normalisation",
    ),
    Broken(
        "rope_cache_interleaved",
        "ch4.norm_rope",
        "ch4/layers.py",
        (
            (
                "angles = torch.cat([angles, angles], dim=-1)",
                "angles = angles.repeat_interleave(2, dim=-1)",
                1,
            ),
        ),
        "came out as Meta's interleaved layout",
    ),
    Broken(
        "rope_applied_to_neighbour_pairs",
        "ch4.norm_rope",
        "ch4/layers.py",
        ((ROTATE_HALF, NEIGHBOUR_PAIRS, 1),),
        "came out as RoPE on neighbouring pairs",
    ),
    Broken(
        "rope_rotated_the_wrong_way",
        "ch4.norm_rope",
        "ch4/layers.py",
        (("torch.cat([-x2, x1], dim=-1)", "torch.cat([x2, -x1], dim=-1)", 1),),
        "came out as a rotation the wrong way round",
    ),
    Broken(
        "rope_positions_ignored",
        "ch4.norm_rope",
        "ch4/layers.py",
        (
            ("c = cos[positions].to(x.dtype)", "c = cos[: x.size(-2)].to(x.dtype)", 1),
            ("s = sin[positions].to(x.dtype)", "s = sin[: x.size(-2)].to(x.dtype)", 1),
        ),
        "came out as RoPE at positions 0..T-1 instead of the positions given",
    ),
    Broken(
        "llama3_scaling_divides_everything",
        "ch4.norm_rope",
        "ch4/layers.py",
        (
            (
                "return torch.where(wavelength < high_freq_wavelength, inv_freq, scaled)",
                "return inv_freq / factor",
                1,
            ),
        ),
        "came out as every frequency divided by factor",
    ),
    Broken(
        "swiglu_silu_on_up_proj",
        "ch4.norm_rope",
        "ch4/layers.py",
        (
            (
                "F.silu(self.gate_proj(x)) * self.up_proj(x)",
                "self.gate_proj(x) * F.silu(self.up_proj(x))",
                1,
            ),
        ),
        "came out as silu applied to up_proj's output",
    ),
    Broken(
        "gqa_is_causal_with_a_cache",
        "ch4.attention",
        "ch4/attention.py",
        (("(q, k, v, attn_mask=mask)", "(q, k, v, is_causal=True)", 1),),
        "aligned to the top-left",
    ),
    Broken(
        "gqa_causal_mask_sliced_to_the_first_rows",
        "ch4.attention",
        "ch4/attention.py",
        (("query_pos = torch.arange(S - T, S,", "query_pos = torch.arange(0, T,", 1),),
        "aligned to the top-left",
    ),
    Broken(
        "gqa_rope_at_position_zero_when_decoding",
        "ch4.attention",
        "ch4/attention.py",
        (("rope_positions(start_pos, T,", "rope_positions(0, T,", 1),),
        "rotated at positions 0..T-1 in every call, not at start_pos",
    ),
    Broken(
        "gqa_repeat_instead_of_repeat_interleave",
        "ch4.attention",
        "ch4/attention.py",
        (
            ("k = k.repeat_interleave(n_rep, dim=1)", "k = k.repeat(1, n_rep, 1, 1)", 1),
            ("v = v.repeat_interleave(n_rep, dim=1)", "v = v.repeat(1, n_rep, 1, 1)", 1),
        ),
        "tiled with repeat (0 1 0 1 ...) instead of repeat_interleave",
    ),
    Broken(
        "llama_forgets_to_tie_the_embeddings",
        "ch4.model",
        "ch4/llama.py",
        (("self.lm_head.weight = self.embed_tokens.weight\n        self.apply", "self.apply", 1),),
        "lm_head.weight should be the same Parameter as embed_tokens.weight",
    ),
    Broken(
        "llama_counts_the_tied_matrix_twice",
        "ch4.model",
        "ch4/llama.py",
        (
            (
                "sum(p.numel() for p in self.parameters())",
                "sum(p.numel() for _, p in self.named_parameters(remove_duplicate=False))",
                1,
            ),
        ),
        "tied embedding matrix counted twice",
    ),
    Broken(
        "moe_softmax_over_all_experts",
        "ch4.moe",
        "ch4/moe.py",
        (
            (
                "weights = F.softmax(top_logits.float(), dim=-1).to(x.dtype)",
                "weights = F.softmax(logits.float(), dim=-1).gather(-1, chosen).to(x.dtype)",
                1,
            ),
        ),
        "came out as expert weights taken from a softmax over all the experts",
    ),
    Broken(
        "moe_aux_loss_per_token",
        "ch4.moe",
        "ch4/moe.py",
        (("fraction = routed.mean(dim=0) / self.top_k", "fraction = routed.mean(dim=0)", 1),),
        "f_e as a share of the tokens",
    ),
    Broken(
        "generate_feeds_the_whole_sequence_with_a_cache",
        "ch4.generate",
        "ch4/generate.py",
        (("new = next_id  # (B, 1)", "new = idx", 1),),
        "came out as the whole sequence fed at every step",
    ),
    Broken(
        "lora_forward_without_scale",
        "ch5.lora",
        "ch5/lora.py",
        (("return out + self.scaling * (self.dropout(x)", "return out + (self.dropout(x)", 1),),
        "came out as the update without its alpha / r scale",
    ),
    Broken(
        "lora_merge_without_scale",
        "ch5.lora",
        "ch5/lora.py",
        (
            (
                "self.base.weight += self.delta_weight()",
                "self.base.weight += self.lora_B @ self.lora_A",
                1,
            ),
        ),
        "came out as W + B A, without the alpha / r scale",
    ),
    Broken(
        "lora_unmerge_adds_again",
        "ch5.lora",
        "ch5/lora.py",
        (
            (
                "self.base.weight -= self.delta_weight()",
                "self.base.weight += self.delta_weight()",
                1,
            ),
        ),
        "came out as W + 2 (alpha / r) B A (the update added again)",
    ),
    Broken(
        "sft_end_token_masked",
        "ch5.sft",
        "ch5/sft.py",
        (
            (
                "labels += [IGNORE] + (body if learn",
                "labels += [IGNORE] + (body[:-1] + [IGNORE] if learn",
                1,
            ),
        ),
        "came out as labels with the assistant's end-of-turn token masked",
    ),
    Broken(
        "sft_labels_not_shifted",
        "ch5.sft",
        "ch5/sft.py",
        (("torch.tensor(labels[1:]", "torch.tensor(labels[:-1]", 1),),
        "came out as labels not shifted",
    ),
    Broken(
        "sft_mean_over_all_positions",
        "ch5.sft",
        "ch5/sft.py",
        (("(picked * mask).sum() / count", "(picked * mask).sum() / mask.numel()", 1),),
        "came out as the mean over every position",
    ),
    Broken(
        "dpo_mean_not_sum",
        "ch5.dpo",
        "ch5/dpo.py",
        (
            (
                "token_logprobs(model, x, y).sum(dim=-1)",
                "token_logprobs(model, x, y).sum(dim=-1) / (y != IGNORE).sum(dim=-1)",
                1,
            ),
        ),
        "came out as the mean over the response tokens",
    ),
    Broken(
        "dpo_without_reference",
        "ch5.dpo",
        "ch5/dpo.py",
        (
            ("chosen = beta * (policy_chosen - ref_chosen)", "chosen = beta * policy_chosen", 1),
            (
                "rejected = beta * (policy_rejected - ref_rejected)",
                "rejected = beta * policy_rejected",
                1,
            ),
        ),
        "came out as the loss without the reference model",
    ),
    Broken(
        "dpo_without_beta",
        "ch5.dpo",
        "ch5/dpo.py",
        (("-F.logsigmoid(chosen - rejected)", "-F.logsigmoid((chosen - rejected) / beta)", 1),),
        "came out as the loss without beta",
    ),
    Broken(
        "rl_batch_normalised",
        "ch5.rl",
        "ch5/rl.py",
        (
            ("rewards.mean(dim=-1, keepdim=True)", "rewards.mean()", 1),
            ("rewards.std(dim=-1, keepdim=True, unbiased=False)", "rewards.std(unbiased=False)", 1),
        ),
        "came out as advantages normalised over the whole batch",
    ),
    Broken(
        "rl_keeps_tokens_after_end",
        "ch5.rl",
        "ch5/rl.py",
        (("    y[after_end] = IGNORE\n", "", 1),),
        "came out as labels that keep the tokens after the end",
    ),
    Broken(
        "rl_no_clipping",
        "ch5.rl",
        "ch5/rl.py",
        (("torch.minimum(ratio * A, clipped * A)", "ratio * A", 1),),
        "came out as the loss without clipping",
    ),
    Broken(
        "ring_gather_from_own_chunk",
        "ch6.collectives",
        "ch6/dist_utils.py",
        (
            (
                "send, recv = (rank + 1 - step) % world_size, (rank - step) % world_size",
                "send, recv = (rank - step) % world_size, (rank - step - 1) % world_size",
                1,
            ),
        ),
        "came out as an all-gather that starts from chunk rank",
    ),
    Broken(
        "ring_last_step_on_one_rank_only",
        "ch6.collectives",
        "ch6/dist_utils.py",
        (
            (
                "for step in range(world_size - 1):  # all-gather",
                "for step in range(world_size - 1 if rank == 0 else world_size - 2):  # all-gather",
                1,
            ),
        ),
        "called on one rank only",
        failure="RankTimeout",
    ),
    Broken(
        "setup_without_timeout",
        "ch6.collectives",
        "ch6/dist_utils.py",
        (
            (
                "world_size=world_size, timeout=timedelta(seconds=timeout_s)",
                "world_size=world_size",
                1,
            ),
        ),
        "pass timeout=timedelta(seconds=timeout_s) to dist.init_process_group",
    ),
    Broken(
        "shard_remainder_to_last_rank",
        "ch6.collectives",
        "ch6/dist_utils.py",
        (
            (
                "start = rank * base + min(rank, extra)\n"
                "    return start, start + base + (1 if rank < extra else 0)",
                "start = rank * base\n"
                "    return start, (start + base if rank < world_size - 1 else n) + 0 * extra",
                1,
            ),
        ),
        "came out as blocks that give the whole remainder to the last rank",
    ),
    Broken(
        "ddp_no_broadcast",
        "ch6.ddp",
        "ch6/ddp.py",
        (("            dist.broadcast(tensor, src)", "            pass", 1),),
        "came out as rank 1's own initial parameters (an unsynchronised initial model)",
    ),
    Broken(
        "ddp_buffers_not_broadcast",
        "ch6.ddp",
        "ch6/ddp.py",
        (("[*model.parameters(), *model.buffers()]", "model.parameters()", 1),),
        "came out as rank 1's own buffers",
    ),
    Broken(
        "ddp_summed_gradients",
        "ch6.ddp",
        "ch6/ddp.py",
        ((".view_as(p) / world_size", ".view_as(p)", 1),),
        "came out as the sum over the ranks, not the average",
    ),
    Broken(
        "ddp_skips_buckets_without_gradients",
        "ch6.ddp",
        "ch6/ddp.py",
        (
            (
                "        grads = [\n",
                "        if all(p.grad is None for p in bucket):\n"
                "            continue  # nothing to send? its peers still wait for it\n"
                "        grads = [\n",
                1,
            ),
        ),
        "called on one rank only",
        failure="RankFailed",
    ),
    Broken(
        "sampler_without_set_epoch",
        "ch6.ddp",
        "ch6/ddp.py",
        (("        self.epoch = epoch\n", "", 1),),
        "came out as epoch 0's order again (a sampler without set_epoch)",
    ),
    Broken(
        "zero_gradients_not_averaged",
        "ch6.zero",
        "ch6/zero.py",
        (("        grad /= self.world_size\n", "", 1),),
        "came out as the update of the gradients summed over the ranks, not averaged",
    ),
    Broken(
        "zero_without_all_gather",
        "ch6.zero",
        "ch6/zero.py",
        (
            (
                "dist.all_gather(list(flat.chunk(self.world_size)), shard)",
                "flat[start : start + self.shard_size] = shard",
                1,
            ),
        ),
        "came out as parameters where only this rank's shard moved",
    ),
    Broken(
        "zero_state_for_every_parameter",
        "ch6.zero",
        "ch6/zero.py",
        (
            ("torch.zeros(self.shard_size, dtype", "torch.zeros(self.numel, dtype", 2),
            (
                "grad = torch.empty(self.shard_size, dtype=torch.float32, device=grads.device)\n"
                "        dist.reduce_scatter(grad, list(grads.chunk(self.world_size)))",
                "grad = grads[: self.numel]\n        dist.all_reduce(grad)",
                1,
            ),
            (
                "start = self.rank * self.shard_size\n"
                "        shard = flat[start : start + self.shard_size].clone()",
                "shard = flat[: self.numel].clone()",
                1,
            ),
            (
                "dist.all_gather(list(flat.chunk(self.world_size)), shard)",
                "flat[: self.numel] = shard",
                1,
            ),
        ),
        "came out as the state of every parameter",
    ),
)


def make_copy(root: Path, broken: Broken) -> Path:
    """A copy of solutions/ with ``broken``'s edits, or a failure naming the edit that is stale."""
    tree = root / broken.name
    shutil.copytree(REPO_ROOT / "solutions", tree, ignore=shutil.ignore_patterns("__pycache__"))
    path = tree / broken.file
    text = path.read_text(encoding="utf-8")
    for old, new, count in broken.edits:
        found = text.count(old)
        assert found == count, (
            f"broken copy {broken.name!r}: {old!r} occurs {found} times in solutions/"
            f"{broken.file}, not {count}; update this edit to the reference"
        )
        text = text.replace(old, new)
    path.write_text(text, encoding="utf-8")
    return tree


def first_failures(jobs: list[dict[str, str]], folder: Path) -> dict[str, dict | None]:
    """Each job's first failure, from one subprocess (see tests/meta/first_failure.py)."""
    jobs_file, results_file = folder / "jobs.json", folder / "results.json"
    jobs_file.write_text(json.dumps(jobs), encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "tests.meta.first_failure", str(jobs_file), str(results_file)],
        cwd=REPO_ROOT,
        env={k: v for k, v in os.environ.items() if k not in ("PYTEST_ADDOPTS", "PYTEST_PLUGINS")},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads(results_file.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def graded(tmp_path_factory) -> dict[str, dict | None]:
    """The first failure of each broken copy's stage: one process per chapter, two at a time."""
    root = tmp_path_factory.mktemp("broken")
    jobs: dict[str, list[dict[str, str]]] = {b.stage.split(".")[0]: [] for b in BROKEN}
    for broken in BROKEN:
        chapter, stage = broken.stage.split(".")
        tests = manifest.CHAPTERS[chapter].stage(stage).tests
        tree = make_copy(root, broken)
        jobs[chapter].append({"name": broken.name, "tests": tests, "tree": str(tree)})
    folders = [root / chapter for chapter in jobs]
    for folder in folders:
        folder.mkdir()
    with ThreadPoolExecutor(max_workers=2) as pool:
        found: dict[str, dict | None] = {}
        for results in pool.map(first_failures, jobs.values(), folders):
            found |= results
        return found


@pytest.mark.parametrize("broken", BROKEN, ids=lambda b: b.name)
def test_broken_copy_fails_its_stage_naming_the_mistake(graded, broken):
    failure = graded[broken.name]
    assert failure is not None, f"{broken.name} passes every test of {broken.stage}"
    assert failure["type"] == broken.failure, f"{broken.name}: {failure}"
    assert broken.words in failure["message"], f"{broken.name}: {failure['message']}"
    assert "\n" not in failure["message"], failure["message"]


def test_every_broken_copy_has_its_own_name():
    names = [broken.name for broken in BROKEN]
    assert len(set(names)) == len(names)
