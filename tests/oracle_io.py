"""Writing tensors in the format tests/oracle.h reads: <stem>.json lists each
tensor's name, dtype (float32 or int64), shape and byte offset into
<stem>.bin, which holds their raw little-endian bytes one after the other."""

import json
import pathlib

import torch


def write_tensors(directory: pathlib.Path, stem: str, tensors: dict) -> None:
    index, chunks, offset = [], [], 0
    for name, tensor in tensors.items():
        tensor = tensor.detach().contiguous().cpu()
        if tensor.dtype not in (torch.float32, torch.int64):
            raise ValueError(f"{name}: dtype {tensor.dtype} is neither float32 nor int64")
        data = tensor.numpy().tobytes()
        index.append({"name": name, "dtype": str(tensor.dtype).removeprefix("torch."),
                      "shape": list(tensor.shape), "offset": offset})
        chunks.append(data)
        offset += len(data)
    (directory / f"{stem}.bin").write_bytes(b"".join(chunks))
    (directory / f"{stem}.json").write_text(json.dumps(index, indent=1))
