"""The course, in order: the single source of truth for chapters, stages, files, docs and hints.

Everything else (the grader, the stub generator, the docs tests, the README) reads this file. A
stage is one pytest file run against one tree; its ``files`` are the tree-relative modules the
learner edits for it; its ``hints`` go from a nudge to the exact idea, one level per request.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Stage:
    name: str
    title: str
    tests: str  # repo-relative pytest file
    files: tuple[str, ...]  # tree-relative files the learner edits for this stage
    doc: str  # repo-relative chapter section that teaches it
    hints: tuple[str, ...]  # from a nudge to the exact idea
    points: int = 10
    test_timeout: float = 60.0  # seconds per test (pytest-timeout)
    time_limit: float = 240.0  # seconds for the whole stage subprocess
    # Library APIs the tests use as oracles and the learner must not call (grader/forbidden.py).
    forbidden: tuple[str, ...] = ()


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
                "Masks are boolean and True means 'may attend': fill the scores where the mask is "
                "False with -inf before the softmax, then set the weights where the mask is False "
                "to 0 (a row that was all -inf is NaN after softmax). Return (output, weights).",
                "MultiHeadAttention: project, then view (B, T, d_model) as (B, T, h, d_k) and "
                "transpose to (B, h, T, d_k) so every head is computed in one batched call.",
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
            doc="docs/chapter02/2_3_other_parts.md",
            hints=(
                "LayerNorm normalises over the last dimension with the biased variance "
                "(unbiased=False), then scales by weight and shifts by bias.",
                "PE[pos, 2i] = sin(pos / 10000^(2i/d)), PE[pos, 2i+1] = cos(pos / 10000^(2i/d)).",
                "Post-LN: x = norm(x + sublayer(x)). Pre-LN (norm_first=True): "
                "x = x + sublayer(norm(x)).",
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
            doc="docs/chapter02/2_4_encoder_decoder.md",
            hints=(
                "encode embeds the source (scaled by sqrt(d_model)) plus sinusoidal positions, then "
                "runs the encoder blocks with a padding mask on the source; initialise both "
                "embeddings with nn.init.normal_(weight, std=d_model ** -0.5).",
                "decode needs two masks: the causal mask AND the target padding mask for "
                "self-attention, and the source padding mask for cross-attention.",
                "greedy_decode: start from BOS, append the argmax of the last position's logits, "
                "and keep finished sequences padded once they have produced EOS.",
                "beam_search: per sentence, score every (beam, token) as beam score + log_softmax, "
                "keep the top (beam_size - finished) with topk over the flattened scores, move "
                "those ending in EOS to the finished list; always call self.encode/self.decode.",
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
            doc="docs/chapter02/2_5_training_and_decoding.md",
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
            doc="docs/chapter03/3_2_tokenizers.md",
            hints=(
                "SimpleTokenizer: sorted(set(text)) gives a stable vocabulary; keep two dicts, "
                "char->id and id->char, and raise ValueError naming a character not in the first.",
                "BPE works on bytes: start from the 256 single bytes, count adjacent pairs (a word "
                "seen c times counts c times), merge the most frequent pair into a new id, repeat; "
                "on equal counts the smallest pair (a, b) wins, and stop when no pair occurs twice.",
                "Keep the pair counts up to date as you merge: merging (a, b) at one place only "
                "turns (x, a) into (x, new) and (b, y) into (new, y), so store where each pair "
                "occurs (a linked list over the symbols) and pick the best pair from a heap.",
                "_encode_chunk: repeatedly find the adjacent pair with the lowest rank in "
                "self._ranks and merge it everywhere with merge_ids; decode joins the tokens' bytes "
                "and decodes them with errors='replace'.",
            ),
        ),
        Stage(
            name="gpt",
            title="The GPT-2 model",
            tests="tests/ch3/test_gpt.py",
            files=("ch3/gpt.py",),
            doc="docs/chapter03/3_1_gpt_overview.md",
            hints=(
                "Token embedding + learned position embedding, n_layer pre-LN blocks, a final "
                "LayerNorm, and an LM head that shares its weight with the token embedding: "
                "self.lm_head.weight = self.transformer.wte.weight.",
                "Causal self-attention: one Linear makes q, k and v (c_attn), split, reshape to "
                "(B, nh, T, hs), mask the future, and project back with c_proj.",
                "GPT-2 init: normal(0, 0.02) everywhere, and std 0.02/sqrt(2*n_layer) for the "
                "residual projections (attn.c_proj and mlp.c_proj).",
                "Use the names of the module docstring exactly (transformer.wte, transformer.h[i]."
                "attn.c_attn, ...): the tests and from_hf_state_dict look parameters up by name, "
                "and parameters() counts a tied weight once.",
            ),
        ),
        Stage(
            name="data",
            title="Datasets and loaders without leakage",
            tests="tests/ch3/test_data.py",
            files=("ch3/data.py",),
            doc="docs/chapter03/3_3_training.md",
            hints=(
                "Split the token stream first, then cut windows inside each split: a window that "
                "crosses the split point leaks validation tokens into training.",
                "Each sample is (x, y) with y = x shifted by one token.",
                "The training order must depend only on (seed, epoch): WindowSampler.__iter__ "
                "seeds a fresh torch.Generator from both every epoch, so a resumed run sees the "
                "same batches.",
            ),
        ),
        Stage(
            name="trainer",
            title="AdamW, warm-up and cosine, clipping, accumulation, checkpoints",
            tests="tests/ch3/test_trainer.py",
            files=("ch3/trainer.py",),
            doc="docs/chapter03/3_3_training.md",
            hints=(
                "get_lr: linear warm-up from 0 to the peak over warmup_steps, then cosine decay to "
                "min_lr at max_steps.",
                "Set param_group['lr'] = get_lr(step) for every group before every optimizer step: a "
                "schedule that is computed but never written to the optimizer does nothing.",
                "Accumulation: divide each micro-batch loss by the number of micro-batches before "
                "backward, and step once.",
                "Exact resume: the checkpoint needs the model, the optimizer, the step, "
                "torch.get_rng_state() and where the data was (epoch, batch_in_epoch); write it to "
                "a temporary file and os.replace it onto the real name.",
            ),
            time_limit=300.0,
        ),
        Stage(
            name="sampling",
            title="Temperature, top-k and top-p sampling",
            tests="tests/ch3/test_sampling.py",
            files=("ch3/sampling.py",),
            doc="docs/chapter03/3_3_training.md",
            hints=(
                "Crop the context to the last block_size tokens, take the last position's logits, "
                "divide by the temperature, sample, append, repeat.",
                "top-k: keep the k largest logits and set the rest to -inf. top-p: sort the "
                "probabilities, keep the smallest prefix whose sum reaches p (always at least one).",
                "temperature == 0 is greedy: take the argmax and never divide by the temperature.",
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
            doc="docs/chapter03/3_3_training.md",
            hints=(
                "Every earlier stage passes but the loss stays high? Check the learning-rate "
                "schedule reaches the optimizer and that the LM head is tied to the embedding.",
                "The stage trains 600 steps of a 2-layer GPT on the built-in corpus (about 10 s for "
                "the reference on 2 idle cores): if yours is much slower, look for Python loops "
                "over the batch or the sequence in attention.",
            ),
            points=20,
            test_timeout=280.0,
            time_limit=420.0,
        ),
    ),
)

CHAPTERS: dict[str, Chapter] = {chapter.name: chapter for chapter in (CH2, CH3)}


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
