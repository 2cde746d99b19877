"""Chapter 2: the Transformer of "Attention Is All You Need", built from its parts.

- ``attention``: scaled dot-product attention, masks, multi-head attention;
- ``block``: LayerNorm, sinusoidal positions, the feed-forward layer, encoder and decoder blocks;
- ``transformer``: the encoder-decoder model with greedy decoding and beam search.
"""
