"""The course, in order: the single source of truth for chapters, stages, files, docs and hints.

Everything else (the grader, the stub generator, the docs tests, the README) reads this file. A
stage is one pytest file run against one tree; its ``files`` are the tree-relative modules the
learner edits for it; its ``hints`` go from a nudge to the exact idea, one level per request. A
hint written as ``Hint(text, tests=(...))`` is the one shown under a failure of those tests (any
other failure shows the stage's first hint).

Time limits. ``test_timeout`` (seconds per test) follows one rule, so that a hung learner hears
"timed out" within seconds while a correct but slower learner is never cut off:

    test_timeout = max(MIN_TEST_TIMEOUT, MARGIN * slowest reference test of the stage),

rounded up to a whole 5 s, the reference timed on 2 idle cores. ``MARGIN`` = 10 covers a loaded
machine (about 3x) times a learner's correct code that is about 3x slower than the reference;
``MIN_TEST_TIMEOUT`` = 10 s covers the first test of a stage, which pays torch's warm-up (0.4-0.9 s
idle, about 3 s at a load of 7 on 2 cores). ``python -m grader.timing`` times the reference and
prints the limit the rule gives beside the manifest's; ``--check`` fails when the reference takes
more than ``test_timeout / MARGIN``. The first test that times out ends its stage (the runner
enforces the limit itself, see ``grader/runner.py``), so a hang costs one limit, not one per test.
``time_limit`` bounds the whole stage process, collection included.

An ``optional`` stage never locks the stages after it, and a chapter counts as passed without it;
it is worth no points (``points=0``), so scores do not depend on it either.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MARGIN = 10.0  # test_timeout / slowest reference test, at least (see the module docstring)
MIN_TEST_TIMEOUT = 10.0  # seconds: a stage's first test pays torch's warm-up


class Hint(str):
    """A hint that names the tests it is for: shown under a failure of one of them."""

    tests: tuple[str, ...]

    def __new__(cls, text: str, tests: tuple[str, ...] = ()) -> Hint:
        hint = super().__new__(cls, text)
        hint.tests = tuple(tests)
        return hint


@dataclass(frozen=True)
class Stage:
    name: str
    title: str
    tests: str  # repo-relative pytest file
    files: tuple[str, ...]  # tree-relative files the learner edits for this stage
    doc: str  # repo-relative chapter section that teaches it
    hints: tuple[str, ...]  # from a nudge to the exact idea (a Hint names the tests it fits)
    points: int = 10
    test_timeout: float = MIN_TEST_TIMEOUT  # seconds per test (the rule above)
    time_limit: float = 240.0  # seconds for the whole stage subprocess
    optional: bool = False  # locks nothing, not needed to pass (give it points=0)
    # Library APIs the tests use as oracles and the learner must not call (grader/forbidden.py).
    forbidden: tuple[str, ...] = ()

    def hint_for(self, test_name: str | None) -> tuple[int, str]:
        """``(level, text)`` of the hint that fits ``test_name``, else the first; (0, "")
        when the stage has none."""
        base = (test_name or "").partition("[")[0]  # test_x[param] is test_x's
        for level, hint in enumerate(self.hints, 1):
            if base in getattr(hint, "tests", ()):
                return level, hint
        return (1, self.hints[0]) if self.hints else (0, "")


@dataclass(frozen=True)
class Chapter:
    name: str
    title: str
    stages: tuple[Stage, ...] = field(default_factory=tuple)

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        names = ", ".join(s.name for s in self.stages)
        raise KeyError(f"chapter {self.name} has no stage {name!r} (stages: {names})")


CH2 = Chapter(
    name="ch2",
    title="The Transformer",
    stages=(
        Stage(
            name="attention",
            title="Scaled dot-product and multi-head attention",
            tests="tests/ch2/test_attention.py",
            files=("ch2/attention.py",),
            doc="docs/chapter02/2_2_attention.md",
            hints=(
                "Start with scaled_dot_product_attention: scores = q @ k^T / sqrt(d_k), then softmax "
                "over the last dimension, then weights @ v.",
                Hint(
                    "Masks are boolean and True means 'may attend': fill the scores where the mask is "
                    "False with -inf before the softmax, then set the weights where the mask is False "
                    "to 0 (a row that was all -inf is NaN after softmax). Return (output, weights).",
                    tests=(
                        "test_sdpa_mask_matches_torch",
                        "test_sdpa_fully_masked_query_gives_zeros",
                        "test_sdpa_rejects_non_boolean_mask",
                        "test_causal_mask",
                        "test_padding_mask",
                        "test_mha_fully_masked_query_is_not_nan",
                        "test_mha_padded_keys_change_nothing",
                        "test_mha_causal_outputs_ignore_the_future",
                    ),
                ),
                Hint(
                    "MultiHeadAttention: project, then view (B, T, d_model) as (B, T, h, d_k) and "
                    "transpose to (B, h, T, d_k) so every head is computed in one batched call.",
                    tests=(
                        "test_mha_rejects_heads_that_do_not_divide_d_model",
                        "test_mha_projections",
                        "test_mha_matches_torch_self_attention",
                        "test_mha_matches_torch_cross_attention",
                        "test_mha_computes_all_heads_at_once",
                    ),
                ),
            ),
            forbidden=(
                "torch.nn.functional.scaled_dot_product_attention",
                "torch.nn.functional.multi_head_attention_forward",
                "torch.nn.MultiheadAttention",
            ),
        ),
        Stage(
            name="block",
            title="LayerNorm, positions, feed-forward, encoder and decoder blocks",
            tests="tests/ch2/test_block.py",
            files=("ch2/block.py",),
            doc="docs/chapter02/2_3_block.md",
            hints=(
                "LayerNorm normalises over the last dimension with the biased variance "
                "(unbiased=False), then scales by weight and shifts by bias.",
                Hint(
                    "PE[pos, 2i] = sin(pos / 10000^(2i/d)), PE[pos, 2i+1] = cos(pos / 10000^(2i/d)).",
                    tests=(
                        "test_positional_encoding_closed_form",
                        "test_positional_encoding_rejects_odd_d_model",
                    ),
                ),
                Hint(
                    "Post-LN: x = norm(x + sublayer(x)). Pre-LN (norm_first=True): "
                    "x = x + sublayer(norm(x)).",
                    tests=(
                        "test_encoder_block_matches_torch",
                        "test_decoder_block_matches_torch",
                        "test_decoder_block_is_causal",
                    ),
                ),
            ),
            forbidden=(
                "torch.nn.LayerNorm",
                "torch.nn.functional.layer_norm",
                "torch.nn.TransformerEncoderLayer",
                "torch.nn.TransformerDecoderLayer",
            ),
        ),
        Stage(
            name="transformer",
            title="The encoder-decoder, greedy decoding and beam search",
            tests="tests/ch2/test_transformer.py",
            files=("ch2/transformer.py",),
            doc="docs/chapter02/2_4_transformer.md",
            hints=(
                "encode embeds the source (scaled by sqrt(d_model)) plus sinusoidal positions, then "
                "runs the encoder blocks with a padding mask on the source; initialise both "
                "embeddings with nn.init.normal_(weight, std=d_model ** -0.5).",
                Hint(
                    "decode needs two masks: the causal mask AND the target padding mask for "
                    "self-attention, and the source padding mask for cross-attention.",
                    tests=(
                        "test_decoding_one_token_at_a_time_equals_teacher_forcing",
                        "test_source_padding_changes_nothing",
                    ),
                ),
                Hint(
                    "greedy_decode: start from BOS, append the argmax of the last position's logits, "
                    "and keep finished sequences padded once they have produced EOS.",
                    tests=(
                        "test_greedy_decode_stops_each_sequence_at_eos",
                        "test_greedy_decode_follows_the_argmax",
                    ),
                ),
                Hint(
                    "beam_search: per sentence, score every (beam, token) as beam score + log_softmax, "
                    "keep the top (beam_size - finished) with topk over the flattened scores, move "
                    "those ending in EOS to the finished list; always call self.encode/self.decode.",
                    tests=(
                        "test_beam_size_one_equals_greedy",
                        "test_beam_search_beats_myopic_greedy",
                        "test_beam_search_length_penalty",
                    ),
                ),
            ),
            forbidden=(
                "torch.nn.Transformer",
                "torch.nn.TransformerEncoder",
                "torch.nn.TransformerDecoder",
            ),
        ),
        Stage(
            name="e2e",
            title="Train your Transformer to translate digits into words",
            tests="tests/ch2/test_e2e.py",
            files=("ch2/attention.py", "ch2/block.py", "ch2/transformer.py"),
            doc="docs/chapter02/2_5_e2e.md",
            hints=(
                "Every earlier stage passes but the model does not learn? Check that dropout is "
                "off in eval mode and that padding is masked in both encoder and decoder.",
                "The data and the training loop are the project's (grader/tasks/ch2.py): train and "
                "translate by hand with them to watch the loss and the outputs of your model.",
            ),
            points=20,
            test_timeout=180.0,
            time_limit=300.0,
        ),
    ),
)

CH3 = Chapter(
    name="ch3",
    title="GPT",
    stages=(
        Stage(
            name="tokenizer",
            title="Character and byte-level BPE tokenizers",
            tests="tests/ch3/test_tokenizer.py",
            files=("ch3/tokenizer.py",),
            doc="docs/chapter03/3_2_tokenizer.md",
            hints=(
                "SimpleTokenizer: sorted(set(text)) gives a stable vocabulary; keep two dicts, "
                "char->id and id->char, and raise ValueError naming a character not in the first.",
                Hint(
                    "BPE works on bytes: start from the 256 single bytes, count adjacent pairs (a word "
                    "seen c times counts c times), merge the most frequent pair into a new id, repeat; "
                    "on equal counts the smallest pair (a, b) wins, and stop when no pair occurs twice.",
                    tests=(
                        "test_merge_ids",
                        "test_learn_merges_worked_example",
                        "test_learn_merges_matches_naive_recount",
                        "test_train_vocab_size_and_naive_merges",
                    ),
                ),
                Hint(
                    "_encode_chunk: repeatedly find the adjacent pair with the lowest rank in "
                    "self._ranks and merge it everywhere with merge_ids; decode joins the tokens' bytes "
                    "and decodes them with errors='replace'.",
                    tests=(
                        "test_encode_matches_training_segmentation",
                        "test_round_trip_any_string",
                        "test_long_text_without_pattern",
                        "test_special_tokens_whole_and_never_merged",
                        "test_decode_unknown_id_and_broken_utf8",
                    ),
                ),
            ),
        ),
        Stage(
            name="bpe_speed",
            title="BPE training that updates its pair counts instead of recounting",
            tests="tests/ch3/test_bpe_speed.py",
            files=("ch3/tokenizer.py",),
            doc="docs/chapter03/3_3_bpe_speed.md",
            hints=(
                "A recount is a pass over all the data for every merge; instead count the pairs "
                "once, and after each merge change only the counts that merge touched.",
                "Keep the pair counts up to date as you merge: merging (a, b) at one place only "
                "turns (x, a) into (x, new) and (b, y) into (new, y), so store where each pair "
                "occurs (a linked list over the symbols) and pick the best pair from a heap.",
            ),
            points=0,
            test_timeout=30.0,
            optional=True,
        ),
        Stage(
            name="gpt",
            title="The GPT-2 model",
            tests="tests/ch3/test_gpt.py",
            files=("ch3/gpt.py",),
            doc="docs/chapter03/3_4_gpt.md",
            hints=(
                "Token embedding + learned position embedding, n_layer pre-LN blocks, a final "
                "LayerNorm, and an LM head that shares its weight with the token embedding: "
                "self.lm_head.weight = self.transformer.wte.weight.",
                Hint(
                    "Causal self-attention: one Linear makes q, k and v (c_attn), split, reshape to "
                    "(B, nh, T, hs), mask the future, and project back with c_proj.",
                    tests=("test_attention_matches_sdpa", "test_causality"),
                ),
                Hint(
                    "GPT-2 init: normal(0, 0.02) everywhere, and std 0.02/sqrt(2*n_layer) for the "
                    "residual projections (attn.c_proj and mlp.c_proj).",
                    tests=("test_gpt2_initialisation", "test_loss_at_init_is_about_log_vocab"),
                ),
                Hint(
                    "Use the names of the module docstring exactly (transformer.wte, transformer.h[i]."
                    "attn.c_attn, ...): the tests and from_hf_state_dict look parameters up by name, "
                    "and parameters() counts a tied weight once.",
                    tests=(
                        "test_parameter_names_follow_gpt2",
                        "test_parameter_counts",
                        "test_from_hf_state_dict_round_trip",
                    ),
                ),
            ),
        ),
        Stage(
            name="data",
            title="Datasets and loaders without leakage",
            tests="tests/ch3/test_data.py",
            files=("ch3/data.py",),
            doc="docs/chapter03/3_5_data.md",
            hints=(
                "Split the token stream first, then cut windows inside each split: a window that "
                "crosses the split point leaks validation tokens into training.",
                Hint(
                    "Each sample is (x, y) with y = x shifted by one token.",
                    tests=(
                        "test_batches_are_windows_shifted_by_one",
                        "test_real_text_windows_decode_to_the_text",
                    ),
                ),
                Hint(
                    "The training order must depend only on (seed, epoch): WindowSampler.__iter__ "
                    "seeds a fresh torch.Generator from both every epoch, so a resumed run sees the "
                    "same batches.",
                    tests=(
                        "test_training_order_is_shuffled_and_seeded",
                        "test_window_sampler_is_a_permutation",
                    ),
                ),
            ),
        ),
        Stage(
            name="trainer",
            title="AdamW, warm-up and cosine, clipping, accumulation, checkpoints",
            tests="tests/ch3/test_trainer.py",
            files=("ch3/trainer.py",),
            doc="docs/chapter03/3_6_trainer.md",
            hints=(
                "get_lr: linear warm-up from 0 to the peak over warmup_steps, then cosine decay to "
                "min_lr at max_steps.",
                Hint(
                    "Set param_group['lr'] = get_lr(step) for every group before every optimizer step: a "
                    "schedule that is computed but never written to the optimizer does nothing.",
                    tests=("test_optimizer_uses_the_scheduled_lr_at_every_step",),
                ),
                Hint(
                    "Accumulation: divide each micro-batch loss by the number of micro-batches before "
                    "backward, and step once.",
                    tests=("test_accumulating_4_by_2_gives_the_gradient_of_one_batch_of_8",),
                ),
                Hint(
                    "Exact resume: the checkpoint needs the model, the optimizer, the step, "
                    "torch.get_rng_state() and where the data was (epoch, batch_in_epoch); write it to "
                    "a temporary file and os.replace it onto the real name.",
                    tests=(
                        "test_checkpoint_holds_everything_and_loads_safely",
                        "test_checkpoint_is_written_atomically",
                        "test_resumed_run_gives_exactly_the_same_losses",
                    ),
                ),
            ),
            test_timeout=15.0,
            time_limit=300.0,
        ),
        Stage(
            name="sampling",
            title="Temperature, top-k and top-p sampling",
            tests="tests/ch3/test_sampling.py",
            files=("ch3/sampling.py",),
            doc="docs/chapter03/3_7_sampling.md",
            hints=(
                "Crop the context to the last block_size tokens, take the last position's logits, "
                "divide by the temperature, sample, append, repeat.",
                Hint(
                    "top-k: keep the k largest logits and set the rest to -inf. top-p: sort the "
                    "probabilities, keep the smallest prefix whose sum reaches p (always at least one).",
                    tests=(
                        "test_top_k_keeps_the_k_most_likely_renormalised",
                        "test_top_p_keeps_the_smallest_nucleus",
                        "test_filter_logits_masks_with_minus_infinity",
                        "test_top_p_nucleus_is_chosen_row_by_row",
                    ),
                ),
                Hint(
                    "temperature == 0 is greedy: take the argmax and never divide by the temperature.",
                    tests=("test_temperature_zero_is_greedy",),
                ),
            ),
        ),
        Stage(
            name="e2e",
            title="Train your GPT and make it talk",
            tests="tests/ch3/test_e2e.py",
            files=(
                "ch3/tokenizer.py",
                "ch3/gpt.py",
                "ch3/data.py",
                "ch3/trainer.py",
                "ch3/sampling.py",
            ),
            doc="docs/chapter03/3_8_e2e.md",
            hints=(
                "Every earlier stage passes but the loss stays high? Check the learning-rate "
                "schedule reaches the optimizer and that the LM head is tied to the embedding.",
                "The stage trains 400 steps of a 2-layer GPT on the built-in corpus (about 13 s for "
                "the reference on an idle core): if yours is much slower, look for Python loops "
                "over the batch or the sequence in attention.",
            ),
            points=20,
            test_timeout=280.0,
            time_limit=420.0,
        ),
    ),
)

CH4 = Chapter(
    name="ch4",
    title="A modern LLM",
    stages=(
        Stage(
            name="norm_rope",
            title="RMSNorm, rotary position embeddings and SwiGLU",
            tests="tests/ch4/test_norm_rope.py",
            files=("ch4/layers.py",),
            doc="docs/chapter04/4_2_norm_rope.md",
            hints=(
                "RMSNorm: upcast to float32, x * rsqrt(mean(x ** 2 over the last dim) + eps), cast "
                "back to the input's dtype, then multiply by weight. No mean is subtracted, no bias.",
                Hint(
                    "rope_cache: inv_freq = 1 / theta ** (arange(0, head_dim, 2) / head_dim), angles = "
                    "outer(positions, inv_freq), then cat([angles, angles]) so column i and column "
                    "i + head_dim/2 share an angle; return (angles.cos(), angles.sin()).",
                    tests=(
                        "test_rope_cache_closed_form",
                        "test_rope_cache_rejects_odd_head_dim",
                        "test_llama3_scaled_frequencies_closed_form",
                        "test_rope_cache_with_llama3_scaling",
                    ),
                ),
                Hint(
                    "apply_rope is 'rotate half': x1, x2 = the two halves of the last dim, "
                    "rotated = cat([-x2, x1]), out = x * cos[positions] + rotated * sin[positions]. "
                    "Index the tables with the positions you are given, never with arange(T).",
                    tests=(
                        "test_apply_rope_closed_form",
                        "test_apply_rope_preserves_norms",
                        "test_rope_scores_depend_only_on_the_distance",
                        "test_apply_rope_honours_positions",
                        "test_apply_rope_per_row_positions",
                    ),
                ),
                Hint(
                    "SwiGLU: down_proj(F.silu(gate_proj(x)) * up_proj(x)), three nn.Linear without bias.",
                    tests=("test_swiglu_layers", "test_swiglu_matches_functional"),
                ),
            ),
            forbidden=("torch.nn.RMSNorm", "torch.nn.functional.rms_norm"),
        ),
        Stage(
            name="attention",
            title="Grouped-query attention and the KV cache",
            tests="tests/ch4/test_attention.py",
            files=("ch4/attention.py",),
            doc="docs/chapter04/4_3_attention.md",
            hints=(
                "Project, view as (B, T, heads, head_dim) and transpose to (B, heads, T, head_dim); "
                "rotate q and k with apply_rope at rope_positions(start_pos, T, pad_mask); repeat the "
                "kv heads n_heads // n_kv_heads times with repeat_interleave(dim=1); attend with "
                "attention_mask(T, S); transpose back and apply o_proj.",
                Hint(
                    "The queries are the LAST T of the S positions: query i sits at S - T + i and sees "
                    "keys 0 .. S - T + i. is_causal=True aligns its mask to the top-left instead, so "
                    "with a cache a one-token query would see only key 0: build the mask yourself.",
                    tests=(
                        "test_attention_mask_closed_form",
                        "test_attention_mask_with_padding",
                        "test_rope_positions",
                        "test_decode_with_cache_equals_full_pass",
                        "test_chunked_prefill_equals_full_pass",
                        "test_left_padding_changes_nothing",
                    ),
                ),
                Hint(
                    "KVCache: per layer, zeros of (batch, n_kv_heads, max_len, head_dim) for k and v; "
                    "update writes the new (B, n_kv_heads, T, head_dim) at [:, :, start_pos:start_pos "
                    "+ T] and returns [:, :, :start_pos + T]. Cache the keys after RoPE and before "
                    "repeating them.",
                    tests=(
                        "test_kv_cache_update",
                        "test_kv_cache_overflow_is_an_error",
                        "test_cache_stores_kv_heads_before_repeating",
                    ),
                ),
            ),
        ),
        Stage(
            name="model",
            title="The Llama model, and loading Hugging Face weights",
            tests="tests/ch4/test_model.py",
            files=("ch4/llama.py",),
            doc="docs/chapter04/4_4_model.md",
            hints=(
                "Use the names of the module docstring exactly (embed_tokens, layers[i]."
                "input_layernorm, .self_attn, .post_attention_layernorm, .mlp, norm, lm_head): "
                "from_hf and load_hf load Hugging Face weights by those names.",
                Hint(
                    "Block: x = x + self_attn(input_layernorm(x), cos, sin, start_pos, cache, layer, "
                    "pad_mask); then x = x + mlp(post_attention_layernorm(x)). Llama.forward passes "
                    "its rope_cos and rope_sin buffers, start_pos, cache, the layer's index and "
                    "pad_mask to every block, then norm and lm_head.",
                    tests=(
                        "test_forward_matches_reference",
                        "test_causality",
                        "test_cache_gives_the_full_pass_logits",
                        "test_load_hf_folder",
                    ),
                ),
                Hint(
                    "tie_embeddings: self.lm_head.weight = self.embed_tokens.weight, and count the "
                    "shared matrix once (sum over self.parameters() does).",
                    tests=("test_tied_embeddings", "test_published_parameter_counts"),
                ),
            ),
        ),
        Stage(
            name="moe",
            title="A sparse mixture of experts (Mixtral)",
            tests="tests/ch4/test_moe.py",
            files=("ch4/moe.py",),
            doc="docs/chapter04/4_5_moe.md",
            hints=(
                "Router logits = gate(x); topk over the experts; weights = softmax of the chosen "
                "logits only; y = sum of weight * expert(x) over the chosen experts.",
                Hint(
                    "No loop over tokens: flatten to (N, dim), and for each expert take the tokens "
                    "that chose it (torch.where(chosen == e)), run the expert once on them and "
                    "index_add_ the weighted result back.",
                    tests=("test_moe_is_batched",),
                ),
                Hint(
                    "In ch4/llama.py, Block.__init__ makes mlp a MoE(dim, hidden_dim, n_experts, "
                    "n_experts_per_tok) when config.n_experts > 0, Block.forward unpacks its (y, "
                    "aux_loss), and Llama.forward adds router_aux_loss_coef * the sum of the aux "
                    "losses to the loss.",
                    tests=(
                        "test_mixtral_folder_loads_and_matches",
                        "test_training_loss_adds_the_aux_loss",
                    ),
                ),
                Hint(
                    "Load balancing: f_e = fraction of the (token, slot) choices that went to e, P_e "
                    "= mean over tokens of softmax(router logits over ALL experts)[e]; aux = "
                    "n_experts * sum_e f_e * P_e (1 when balanced).",
                    tests=(
                        "test_aux_loss_closed_form",
                        "test_aux_loss_is_one_for_a_uniform_router",
                    ),
                ),
            ),
        ),
        Stage(
            name="generate",
            title="Generation with a KV cache, batched with left padding",
            tests="tests/ch4/test_generate.py",
            files=("ch4/generate.py",),
            doc="docs/chapter04/4_6_generate.md",
            hints=(
                Hint(
                    "With the cache: model(idx, start_pos=0, cache=cache) once for the prompt, then "
                    "model(next_token, start_pos=number of tokens so far, cache=cache) per step. "
                    "Without it: model(idx) on the whole sequence each step.",
                    tests=(
                        "test_cache_feeds_one_token_per_step",
                        "test_cached_and_uncached_greedy_are_identical",
                    ),
                ),
                Hint(
                    "left_pad puts every prompt against the right edge; pass pad_mask to every model "
                    "call and append a True column to it for each new token.",
                    tests=("test_left_pad", "test_batched_prompts_equal_one_at_a_time"),
                ),
                Hint(
                    "The sampling rules are chapter 3's: temperature 0 is the argmax; otherwise "
                    "filter_logits(logits / temperature, top_k, top_p), softmax, torch.multinomial "
                    "with the generator.",
                    tests=("test_sampling_follows_chapter_3", "test_seeded_sampling_repeats"),
                ),
            ),
        ),
        Stage(
            name="e2e",
            title="Train your Llama with chapter 3's trainer, generate with the cache",
            tests="tests/ch4/test_e2e.py",
            files=("ch4/layers.py", "ch4/attention.py", "ch4/llama.py", "ch4/generate.py"),
            doc="docs/chapter04/4_7_e2e.md",
            hints=(
                "Every earlier stage passes but the loss stays high? The recipe is chapter 3's "
                "(grader/tasks/ch4.py trains your Llama with your ch3 trainer and data): check "
                "that Llama.forward returns the mean cross-entropy over every position.",
                Hint(
                    "The cached text differs from the uncached one? Cache the keys after RoPE, feed "
                    "each new token at start_pos = the number of tokens before it, and let a "
                    "one-token query see every cached key (not is_causal=True).",
                    tests=("test_cached_generation_equals_uncached",),
                ),
                "The stage trains 200 steps of a 2-layer Llama (about 9 s for the reference on an "
                "idle core): if yours is much slower, look for Python loops over tokens or heads.",
            ),
            points=20,
            test_timeout=180.0,  # the rule: the reference's slowest test took 14.6-16.6 s (load 1.7)
            time_limit=300.0,
        ),
    ),
)

CH5 = Chapter(
    name="ch5",
    title="Fine-tuning and alignment",
    stages=(
        Stage(
            name="lora",
            title="LoRA: low-rank adapters on a frozen model",
            tests="tests/ch5/test_lora.py",
            files=("ch5/lora.py",),
            doc="docs/chapter05/5_2_lora.md",
            hints=(
                "LoRALinear keeps the base Linear (frozen: requires_grad_(False) on its weight and "
                "bias) and adds scaling * x A^T B^T with scaling = alpha / r; A (r, in) is "
                "Kaiming-uniform, B (out, r) zeros, so a fresh adapter changes nothing.",
                Hint(
                    "merge adds scaling * (B @ A) to base.weight in place, under torch.no_grad(), "
                    "and sets merged = True so that forward stops adding the update; unmerge "
                    "subtracts it again.",
                    tests=(
                        "test_merge_and_unmerge_are_exact",
                        "test_merge_lora_gives_the_base_architecture_back",
                    ),
                ),
                Hint(
                    "apply_lora: collect (name, module) from model.named_modules() first, then "
                    "setattr(parent, child, LoRALinear(module, r, alpha)) with the parent found by "
                    "model.get_submodule(name.rpartition('.')[0]); skip a Linear whose parent is "
                    "already a LoRALinear.",
                    tests=(
                        "test_apply_lora_replaces_the_named_layers_in_place",
                        "test_trainable_count_is_r_times_in_plus_out",
                        "test_gradients_reach_only_a_and_b",
                    ),
                ),
                Hint(
                    "The adapters are the entries of model.state_dict() whose last name part is "
                    "lora_A or lora_B; load them with model.load_state_dict(state, strict=False) "
                    "after checking every key.",
                    tests=("test_adapters_save_and_load_alone",),
                ),
            ),
        ),
        Stage(
            name="sft",
            title="Supervised fine-tuning: chat template, loss mask, batches",
            tests="tests/ch5/test_sft.py",
            files=("ch5/sft.py",),
            doc="docs/chapter05/5_3_sft.md",
            hints=(
                "build_example: per message, the role's special id, then tokenizer.encode(content) "
                "plus the <|end|> id; the labels copy the ids of an assistant's content and its "
                "<|end|>, and are -1 everywhere else.",
                Hint(
                    "collate shifts once: x = ids[:-1], y = labels[1:]; pad x with pad_id and y with "
                    "-1 on the right, to the longest example.",
                    tests=("test_collate_shifts_once_and_pads_with_ignored_labels",),
                ),
                Hint(
                    "masked_cross_entropy: gather log_softmax at the targets (clamp -1 to 0 to "
                    "index), multiply by the mask, sum, and divide by the number of labelled "
                    "positions, not by B * T.",
                    tests=(
                        "test_masked_cross_entropy_counts_only_labelled_tokens",
                        "test_masked_positions_get_no_gradient",
                        "test_sft_loss_is_the_models_masked_loss",
                    ),
                ),
            ),
        ),
        Stage(
            name="dpo",
            title="Direct preference optimization",
            tests="tests/ch5/test_dpo.py",
            files=("ch5/dpo.py",),
            doc="docs/chapter05/5_4_dpo.md",
            hints=(
                "token_logprobs: log_softmax over the vocabulary, gather at y (clamp -1 to 0 to "
                "index), then zero the positions where y is -1; sequence_logprobs sums them.",
                Hint(
                    "dpo_loss: rewards are beta * (policy - reference) for chosen and rejected; the "
                    "loss is -F.logsigmoid(chosen_rewards - rejected_rewards).mean(), and the "
                    "rewards you return are detached.",
                    tests=(
                        "test_dpo_loss_matches_the_closed_form",
                        "test_equal_policy_and_reference_give_log_2",
                        "test_gradient_raises_chosen_and_lowers_rejected",
                    ),
                ),
                Hint(
                    "frozen_reference: copy.deepcopy(model).eval(), then requires_grad_(False) on "
                    "every parameter of the copy (never on the policy).",
                    tests=("test_reference_is_a_frozen_copy_in_eval_mode",),
                ),
            ),
        ),
        Stage(
            name="rl",
            title="Policy-gradient fine-tuning on a verifiable reward (GRPO)",
            tests="tests/ch5/test_rl.py",
            files=("ch5/rl.py",),
            doc="docs/chapter05/5_5_rl.md",
            hints=(
                "group_advantages: mean and std over dim=-1 with keepdim=True (one group per row), "
                "std with unbiased=False, then (r - mean) / (std + eps).",
                Hint(
                    "rollout_batch: x = seq[:, :-1], y = seq[:, 1:].clone(); y[:, t] belongs to the "
                    "prompt for t < prompt_len - 1; after the first end token, a cumulative sum of "
                    "(y == end_id) minus the token itself is > 0.",
                    tests=("test_rollout_batch_scores_only_the_answer",),
                ),
                Hint(
                    "grpo_loss: ratio = exp(logp - old_logp.detach()), objective = min(ratio * A, "
                    "clamp(ratio, 1 - eps, 1 + eps) * A) with A = advantages[:, None], minus "
                    "kl_coef * approx_kl; the loss is -(objective * mask).sum() / mask.sum().",
                    tests=(
                        "test_grpo_loss_is_the_clipped_objective",
                        "test_grpo_loss_with_a_kl_penalty",
                        "test_gradient_at_ratio_one_is_the_policy_gradient",
                    ),
                ),
            ),
        ),
        Stage(
            name="e2e",
            title="Fine-tune a model you pretrained: SFT with LoRA, DPO, then RL",
            tests="tests/ch5/test_e2e.py",
            files=(
                "ch3/gpt.py",
                "ch3/sampling.py",
                "ch5/lora.py",
                "ch5/sft.py",
                "ch5/dpo.py",
                "ch5/rl.py",
            ),
            doc="docs/chapter05/5_6_e2e.md",
            hints=(
                "Every earlier stage passes but SFT does not raise the accuracy? Check that the "
                "assistant's <|end|> is labelled (greedy answers are read up to it) and that "
                "collate shifts the labels exactly once.",
                "RL does not raise the held-out reward? The rl stage's tests check each piece; "
                "check that the advantages reach grpo_loss with their sign (a right answer's is "
                "positive) and that token_logprobs is 0 only where y is -1.",
                "The recipe is the project's (grader/tasks/ch5.py): run python -m grader.tasks.ch5 "
                "with LLMFS_TREE=exercises to print your numbers for a seed.",
            ),
            points=20,
            test_timeout=280.0,
            time_limit=420.0,
        ),
    ),
)

CH6 = Chapter(
    name="ch6",
    title="Training at scale",
    stages=(
        Stage(
            name="collectives",
            title="Joining a process group, and a ring all-reduce from send/recv",
            tests="tests/ch6/test_collectives.py",
            files=("ch6/dist_utils.py",),
            doc="docs/chapter06/6_2_collectives.md",
            hints=(
                "setup: read RANK, WORLD_SIZE and LOCAL_RANK from os.environ (raise a RuntimeError "
                "naming any of the five torchrun variables that is missing), pick nccl when "
                "torch.cuda.is_available() else gloo, and call dist.init_process_group(backend, "
                "rank=rank, world_size=world_size, timeout=timedelta(seconds=timeout_s)).",
                Hint(
                    "shard: base, extra = divmod(n, world_size); start = rank * base + min(rank, "
                    "extra); the block is one longer when rank < extra.",
                    tests=("test_shard_splits_like_tensor_split",),
                ),
                Hint(
                    "ring_all_reduce: cut tensor.view(-1) into chunks with shard. Reduce-scatter: "
                    "for step in range(N - 1) isend chunk (rank - step) % N to the right, recv "
                    "chunk (rank - step - 1) % N from the left into a buffer and add it. "
                    "All-gather: isend chunk (rank + 1 - step) % N, recv chunk (rank - step) % N "
                    "straight into place. Wait for each isend after its recv.",
                    tests=(
                        "test_ring_all_reduce_on_two_ranks",
                        "test_ring_all_reduce_on_three_ranks",
                    ),
                ),
            ),
            test_timeout=60.0,  # above the rule: a hang must meet run_ranks' 20 s limit first
            forbidden=("torch.distributed.all_reduce",),
        ),
        Stage(
            name="ddp",
            title="Data parallelism by hand: broadcast, bucketed gradient averaging, sampler",
            tests="tests/ch6/test_ddp.py",
            files=("ch6/ddp.py",),
            doc="docs/chapter06/6_3_ddp.md",
            hints=(
                Hint(
                    "broadcast_parameters: under torch.no_grad(), dist.broadcast(t, src) for every "
                    "t in model.parameters() and then model.buffers(); it writes in place.",
                    tests=("test_broadcast_parameters_synchronises_the_initial_model",),
                ),
                Hint(
                    "all_reduce_gradients, per bucket: torch.cat the flattened grads (zeros for a "
                    "None grad) and one 0/1 flag per parameter, dist.all_reduce once, divide the "
                    "gradient part by dist.get_world_size(), copy each slice back with "
                    ".view_as(p); leave grad None where the flag summed to 0.",
                    tests=(
                        "test_all_reduce_gradients_averages_in_buckets",
                        "test_a_parameter_used_on_one_rank_only",
                    ),
                ),
                Hint(
                    "train_step: _, loss = model(x, y); loss.backward(); all_reduce_gradients; "
                    "optimizer.step(); optimizer.zero_grad(); then all_reduce a copy of the loss "
                    "and divide by the world size.",
                    tests=("test_training_on_halves_equals_one_process_and_ddp",),
                ),
                Hint(
                    "ShardedSampler: num_samples = n // world_size with drop_last, else ceil(n / "
                    "world_size); the order is torch.randperm(n, generator seeded with seed + "
                    "epoch), padded with its own head to num_samples * world_size (or cut), and "
                    "rank r takes order[r::world_size]; __iter__ counts self.position as it "
                    "yields.",
                    tests=(
                        "test_sampler_gives_distributed_samplers_indices",
                        "test_set_epoch_changes_the_order",
                        "test_sampler_resumes_mid_epoch",
                    ),
                ),
            ),
            test_timeout=60.0,  # above the rule: a hang must meet run_ranks' 20 s limit first
        ),
        Stage(
            name="zero",
            title="ZeRO-1: AdamW with its state sharded over the ranks",
            tests="tests/ch6/test_zero.py",
            files=("ch6/zero.py",),
            doc="docs/chapter06/6_4_zero.md",
            hints=(
                "__init__: shard_size = ceil(numel / world_size); exp_avg and exp_avg_sq are "
                "fp32 zeros of shard_size numbers each (this rank's shard only).",
                Hint(
                    "step: grads = self._flat(grads, zeros for None); dist.reduce_scatter(shard "
                    "buffer, list(grads.chunk(world_size))) and divide by world_size; update "
                    "flat params[rank * shard_size : (rank + 1) * shard_size] with AdamW; "
                    "dist.all_gather(list(flat.chunk(world_size)), shard) and copy flat back "
                    "into the parameters.",
                    tests=(
                        "test_one_rank_equals_adamw",
                        "test_two_ranks_equal_adamw_on_the_whole_batch",
                        "test_two_ranks_equal_zero_redundancy_optimizer_with_half_the_state",
                    ),
                ),
                "AdamW at step t: p -= lr * weight_decay * p; m = b1 m + (1 - b1) g; v = b2 v + "
                "(1 - b2) g^2; p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps).",
            ),
            test_timeout=60.0,  # above the rule: a hang must meet run_ranks' 20 s limit first
        ),
        Stage(
            name="tensor_parallel",
            title="Tensor parallelism: column- and row-parallel layers, Megatron's f and g",
            tests="tests/ch6/test_tensor_parallel.py",
            files=("ch6/tensor_parallel.py",),
            doc="docs/chapter06/6_5_tensor_parallel.md",
            hints=(
                "f (_CopyToParallelRegion) returns x.view_as(x) in forward and all-reduces a "
                "clone of the gradient in backward; g (_ReduceFromParallelRegion) all-reduces a "
                "clone of x in forward and returns the gradient unchanged in backward.",
                Hint(
                    "A Linear's weight is (out, in). ColumnParallelLinear keeps rows "
                    "rank*out/N:(rank+1)*out/N of the weight and bias; RowParallelLinear keeps "
                    "columns rank*in/N:(rank+1)*in/N of the weight and the WHOLE bias.",
                    tests=("test_shards_are_the_right_slices",),
                ),
                Hint(
                    "Column forward: F.linear(copy_to_parallel_region(x), weight, bias), then "
                    "gather_from_parallel_region if gather_output. Row forward: "
                    "scatter_to_parallel_region(x) unless input_is_parallel, then "
                    "reduce_from_parallel_region(F.linear(x, weight)) and add the bias after the "
                    "sum, once.",
                    tests=(
                        "test_column_parallel_matches_linear",
                        "test_row_parallel_matches_linear",
                        "test_parallel_mlp_matches_mlp_and_torch_tensor_parallel",
                    ),
                ),
                Hint(
                    "Attention: the full c_attn stacks all queries, then all keys, then all "
                    "values; this rank's rows are its block of each: torch.cat of three "
                    "torch.arange(p * C + rank * C/N, p * C + (rank + 1) * C/N) for p in 0, 1, 2. "
                    "Then split the local output in three (C/N each) and run n_head/N heads.",
                    tests=("test_parallel_attention_matches_attention",),
                ),
            ),
            test_timeout=60.0,
            forbidden=("torch.distributed.tensor.parallel.parallelize_module",),
        ),
        Stage(
            name="fsdp",
            title="FSDP: sharded parameters with fully_shard, sharded checkpoints",
            tests="tests/ch6/test_fsdp.py",
            files=("ch6/fsdp.py",),
            doc="docs/chapter06/6_6_fsdp.md",
            hints=(
                "shard_model: fully_shard(block, mesh=mesh) for each block in "
                "model.transformer.h, then fully_shard(model, mesh=mesh); return model.",
                Hint(
                    "parameter_bytes: for p in model.parameters(), count p.to_local() when p is a "
                    "DTensor (its numel() is the whole parameter's), else p itself: numel() * "
                    "element_size().",
                    tests=("test_two_ranks_match_one_process_and_hold_half_the_bytes",),
                ),
                Hint(
                    "save_sharded: dcp.save({'model': get_model_state_dict(model), 'optimizer': "
                    "get_optimizer_state_dict(model, optimizer)}, checkpoint_id=str(folder)). "
                    "load_sharded: build the same dict, dcp.load(it, checkpoint_id=...), then "
                    "set_model_state_dict and set_optimizer_state_dict with what was loaded.",
                    tests=("test_checkpoint_saved_by_two_ranks_resumes_on_one",),
                ),
            ),
            test_timeout=60.0,
        ),
        Stage(
            name="e2e",
            title="Train your GPT with torchrun: DDP or FSDP on 2 processes, then sample",
            tests="tests/ch6/test_e2e.py",
            files=("ch3/gpt.py", "ch6/dist_utils.py", "ch6/ddp.py", "ch6/fsdp.py"),
            doc="docs/chapter06/6_7_e2e.md",
            hints=(
                "Every earlier stage passes but the losses differ from one process? The first "
                "loss comes before any update: if it differs, the ranks did not read the global "
                "batch together (each its own ShardedSampler part).",
                "The trainer is given (ch6/train.py): run python -m torch.distributed.run "
                "--nproc_per_node 2 -m grader.tasks.ch6 train --out /tmp/run with "
                "LLMFS_TREE=exercises to see your run's losses.",
            ),
            points=20,
            # The torchrun test took 16 s at a load of 2.5 (three fresh Python processes, each
            # importing torch): the rule's 165 s. Its own subprocess limit (120 s) fires first.
            test_timeout=180.0,
            time_limit=300.0,
        ),
    ),
)

CHAPTERS: dict[str, Chapter] = {chapter.name: chapter for chapter in (CH2, CH3, CH4, CH5, CH6)}


def stage_of_file(path: str) -> Stage | None:
    """The first stage whose ``files`` name the tree-relative ``path`` (``ch2/attention.py``)."""
    for chapter in CHAPTERS.values():
        for stage in chapter.stages:
            if path in stage.files:
                return stage
    return None


def chapter_of_stage(stage: Stage) -> Chapter:
    for chapter in CHAPTERS.values():
        if stage in chapter.stages:
            return chapter
    raise KeyError(stage.name)
