"""Read and write the safetensors format, so that a published GPT-2 loads without a dependency.

A ``.safetensors`` file is: 8 bytes, the header length N as a little-endian unsigned 64-bit
integer; N bytes of JSON, ``{name: {"dtype": "F32", "shape": [...], "data_offsets": [begin,
end]}, ..., "__metadata__": {...}}``; then the raw little-endian tensor bytes, each tensor at
``[begin, end)`` counted from the end of the header. That is the whole format.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import torch

DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
NAMES = {dtype: name for name, dtype in DTYPES.items()}


def load_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of the safetensors file at ``path``, on the CPU, by name (little-endian hosts).

    Raises:
        ValueError: if the file is not in the safetensors format or uses an unknown dtype.
    """
    data = bytearray(Path(path).read_bytes())  # writable, so torch.frombuffer shares it
    if len(data) < 8:
        raise ValueError(f"{path} is not a safetensors file: {len(data)} bytes")
    (n,) = struct.unpack("<Q", data[:8])
    if 8 + n > len(data):
        raise ValueError(f"{path} is not a safetensors file: header of {n} bytes past the end")
    try:
        header = json.loads(data[8 : 8 + n].decode("utf-8"))
    except ValueError as e:
        raise ValueError(f"{path} is not a safetensors file: bad JSON header ({e})") from e
    if not isinstance(header, dict):
        kind = type(header).__name__
        raise ValueError(f"{path} is not a safetensors file: its header is a JSON {kind}")
    header.pop("__metadata__", None)
    tensors = {}
    for name, info in header.items():
        if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
            raise ValueError(f"{path}: tensor {name!r} needs a dtype, a shape and data_offsets")
        if info["dtype"] not in DTYPES:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
        dtype = DTYPES[info["dtype"]]
        begin, end = info["data_offsets"]
        if end > len(data) - 8 - n or begin > end:
            raise ValueError(f"{path}: tensor {name!r} lies outside the file (truncated?)")
        count = (end - begin) // dtype.itemsize
        if count != math.prod(info["shape"]) or count * dtype.itemsize != end - begin:
            raise ValueError(
                f"{path}: tensor {name!r} has shape {info['shape']} but {end - begin} bytes of "
                f"{info['dtype']} data"
            )
        if count == 0:
            flat = torch.empty(0, dtype=dtype)
        else:  # a view of the file's bytes, not a copy (GPT-2 small is 500 MB)
            flat = torch.frombuffer(data, dtype=dtype, count=count, offset=8 + n + begin)
        tensors[name] = flat.reshape(info["shape"])
    return tensors


def save_file(tensors: dict[str, torch.Tensor], path: str | Path) -> None:
    """Write ``tensors`` to ``path`` in the safetensors format (little-endian, C order)."""
    header, chunks, offset = {}, [], 0
    for name, tensor in tensors.items():
        raw = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        header[name] = {
            "dtype": NAMES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        chunks.append(raw)
        offset += len(raw)
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)  # pad so the data starts 8-byte aligned, as the spec likes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for raw in chunks:
            f.write(raw)
