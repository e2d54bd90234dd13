"""Reference safetensors files for tests/io/safetensors_test.cpp.

Usage: safetensors_oracle.py OUT_DIR

Writes, with the reference packages (safetensors, torch, transformers):
  tensors.safetensors       every dtype, special values, a scalar, zero-size
                            tensors, non-ASCII names, rich metadata
  tensors_pt.safetensors    the same tensors with {"format": "pt"} only
  empty.safetensors         no tensors, no metadata
  tiny_model_sharded/       a tiny Llama saved by save_pretrained in shards
  tiny_model_single/        the same model in one model.safetensors
  expected.json             what the C++ test checks against, independent of
                            the safetensors format: per file the metadata and
                            per tensor its dtype, shape and raw little-endian
                            bytes (hex); "tiny_model" is the model's
                            state_dict the same way; "tiny_model_max_shard_size"
                            the shard limit used.
"""

import json
import os
import shutil
import sys

import torch
import transformers
from safetensors.torch import save_file

DTYPE_NAMES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}

METADATA = {
    "format": "pt",
    "author": "remat tests",
    "unicode": "h\u00e9llo w\u00f6rld \u2713 \u540d\u524d",
    "empty": "",
    "json_like": '{"a": [1, 2], "b": null}',
    "escapes": 'quote " backslash \\ newline \n tab \t',
}

TINY_MODEL_MAX_SHARD_SIZE = 5000


def describe(t):
    raw = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    return {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape), "hex": raw.hex()}


def bits(values, int_dtype, float_dtype):
    """A float tensor from raw bit patterns (NaN payloads, -0, subnormals)."""
    return torch.tensor(values, dtype=int_dtype).view(float_dtype)


def reference_tensors():
    g = torch.Generator().manual_seed(0)
    inf, nan = float("inf"), float("nan")
    return {
        "f64.special": torch.tensor([0.0, -0.0, 1.5, inf, -inf, nan, 5e-324, 1.7976931348623157e308],
                                    dtype=torch.float64).reshape(2, 4),
        "f64.random": torch.randn(3, 5, generator=g, dtype=torch.float64),
        "f32.special": torch.tensor([0.0, -0.0, 1.5, inf, -inf, nan, 1e-45, 3.4028234663852886e38],
                                    dtype=torch.float32),
        "f32.nan_payloads": bits([0x7FC00001, -0x7FFFFFFF, 0x7F800001], torch.int32, torch.float32),
        "f32.random": torch.randn(4, 3, 2, generator=g),
        "f16.special": torch.tensor([0.0, -0.0, 65504.0, 6e-8, inf, -inf, nan, -1.0],
                                    dtype=torch.float16),
        "f16.random": torch.randn(7, generator=g).to(torch.float16),
        "bf16.special": torch.tensor([0.0, -0.0, 3.3895e38, 1e-40, inf, nan, -2.5],
                                     dtype=torch.bfloat16),
        "bf16.random": torch.randn(3, 3, generator=g).to(torch.bfloat16),
        "i64.extremes": torch.tensor([-(2**63), 2**63 - 1, 0, -1, 123456789012345], dtype=torch.int64),
        "i32.extremes": torch.tensor([[-(2**31), 2**31 - 1], [0, -7]], dtype=torch.int32),
        "i16.extremes": torch.tensor([-(2**15), 2**15 - 1, 0, 300], dtype=torch.int16),
        "i8.extremes": torch.tensor([-128, 127, 0, -1, 5], dtype=torch.int8),
        "u8.all": torch.arange(256, dtype=torch.int32).to(torch.uint8).reshape(16, 16),
        "bool.mixed": torch.tensor([[True, False, True], [False, False, True]]),
        "u8.odd_length": torch.tensor([1, 2, 3], dtype=torch.uint8),
        "scalar.f32": torch.tensor(3.25),
        "scalar.i64": torch.tensor(-42, dtype=torch.int64),
        "scalar.bool": torch.tensor(True),
        "empty.f32": torch.zeros(0),
        "empty.f16.2x0x3": torch.zeros(2, 0, 3, dtype=torch.float16),
        "empty.u8": torch.zeros(0, dtype=torch.uint8),
        "model.layers.0.self_attn.q_proj.weight": torch.randn(4, 4, generator=g),
        "n\u00e4me.\u540d\u524d": torch.tensor([1.0, 2.0]),
    }


def tiny_model():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=32,
        tie_word_embeddings=False,
    )
    return transformers.LlamaForCausalLM(config).eval()


def write_model(out, expected):
    model = tiny_model()
    sharded = os.path.join(out, "tiny_model_sharded")
    model.save_pretrained(sharded, max_shard_size=TINY_MODEL_MAX_SHARD_SIZE)
    model.save_pretrained(os.path.join(out, "tiny_model_single"))
    index_path = os.path.join(sharded, "model.safetensors.index.json")
    with open(index_path) as f:
        weight_map = json.load(f)["weight_map"]
    state = model.state_dict()
    if set(weight_map) != set(state):
        raise SystemExit(f"saved weights {sorted(weight_map)} differ from state_dict {sorted(state)}")
    if len(set(weight_map.values())) < 3:
        raise SystemExit("the tiny model should be saved in several shards")
    expected["tiny_model"] = {name: describe(t) for name, t in state.items()}
    expected["tiny_model_max_shard_size"] = TINY_MODEL_MAX_SHARD_SIZE


def main():
    out = sys.argv[1]
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    tensors = reference_tensors()
    expected = {}
    files = {"tensors.safetensors": METADATA, "tensors_pt.safetensors": {"format": "pt"}}
    for name, metadata in files.items():
        save_file(tensors, os.path.join(out, name), metadata=metadata)
        expected[name] = {"metadata": metadata,
                          "tensors": {k: describe(v) for k, v in tensors.items()}}
    save_file({}, os.path.join(out, "empty.safetensors"))
    expected["empty.safetensors"] = {"metadata": {}, "tensors": {}}
    write_model(out, expected)
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1, ensure_ascii=False)


if __name__ == "__main__":
    main()
