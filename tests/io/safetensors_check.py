"""Checks the files tests/io/safetensors_test.cpp wrote, with the reference
packages: safetensors reads them, huggingface_hub's sharding gives the same
shard files and index text, and transformers loads the saved tiny model.

Usage: safetensors_check.py ORACLE_DIR CPP_DIR
  ORACLE_DIR  what safetensors_oracle.py wrote
  CPP_DIR     what the C++ test wrote: tensors.safetensors,
              noncontig.safetensors, model_sharded/, model_single/
"""

import json
import os
import shutil
import sys

import torch
import transformers
from huggingface_hub import split_torch_state_dict_into_shards
from safetensors import safe_open
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from safetensors_oracle import METADATA  # noqa: E402


def raw(t):
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def check_same(got, want, what):
    if set(got) != set(want):
        raise SystemExit(f"{what}: names {sorted(got)} != {sorted(want)}")
    for name in want:
        a, b = got[name], want[name]
        if a.dtype != b.dtype or a.shape != b.shape or raw(a) != raw(b):
            raise SystemExit(f"{what}: tensor {name!r} differs: {a.dtype} {tuple(a.shape)} "
                             f"vs {b.dtype} {tuple(b.shape)}")


def metadata_of(path):
    with safe_open(path, framework="pt") as f:
        return f.metadata()


def noncontiguous_tensors():
    """The same tensors as NonContiguousTensors() in safetensors_test.cpp."""
    return {
        "permuted": torch.arange(24, dtype=torch.float32).reshape(2, 3, 4).permute(2, 0, 1),
        "strided": torch.arange(10, dtype=torch.int64)[::3],
        "expanded": torch.arange(3, dtype=torch.float16).expand(4, 3),
        "offset_view": torch.arange(20, dtype=torch.int32).reshape(4, 5)[1:3, 1:4],
        "transposed_bf16": torch.arange(6, dtype=torch.float32).reshape(2, 3).to(torch.bfloat16).t(),
        "bool_strided": (torch.arange(8) % 3 == 0)[::2],
    }


def check_tensor_files(oracle, cpp):
    path = os.path.join(cpp, "tensors.safetensors")
    check_same(load_file(path), load_file(os.path.join(oracle, "tensors.safetensors")), path)
    if metadata_of(path) != METADATA:
        raise SystemExit(f"{path}: metadata {metadata_of(path)} != {METADATA}")
    path = os.path.join(cpp, "noncontig.safetensors")
    check_same(load_file(path), noncontiguous_tensors(), path)


def reference_state(oracle):
    """The tiny model's weights in name order, each in its own storage."""
    directory = os.path.join(oracle, "tiny_model_sharded")
    with open(os.path.join(directory, "model.safetensors.index.json")) as f:
        shards = sorted(set(json.load(f)["weight_map"].values()))
    state = {}
    for shard in shards:
        state.update({k: v.clone() for k, v in load_file(os.path.join(directory, shard)).items()})
    return dict(sorted(state.items()))


def check_sharded(oracle, cpp, state, max_shard_size):
    directory = os.path.join(cpp, "model_sharded")
    split = split_torch_state_dict_into_shards(state, max_shard_size=max_shard_size)
    if not split.is_sharded:
        raise SystemExit("the reference split of the tiny model should be sharded")
    files = sorted(f for f in os.listdir(directory) if f.endswith(".safetensors"))
    if files != sorted(split.filename_to_tensors):
        raise SystemExit(f"{directory}: shard files {files} != {sorted(split.filename_to_tensors)}")
    index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
    want = json.dumps(index, indent=2, sort_keys=True) + "\n"
    with open(os.path.join(directory, "model.safetensors.index.json")) as f:
        got = f.read()
    if got != want:
        raise SystemExit(f"{directory}: index differs from the reference:\n{got}\nvs\n{want}")
    for shard, names in split.filename_to_tensors.items():
        path = os.path.join(directory, shard)
        if metadata_of(path) != {"format": "pt"}:
            raise SystemExit(f"{path}: metadata {metadata_of(path)} != {{'format': 'pt'}}")
        check_same(load_file(path), {n: state[n] for n in names}, path)


def check_transformers_loads(oracle, cpp, name):
    directory = os.path.join(cpp, name)
    shutil.copy(os.path.join(oracle, "tiny_model_sharded", "config.json"), directory)
    model, info = transformers.AutoModelForCausalLM.from_pretrained(directory,
                                                                    output_loading_info=True)
    problems = {k: v for k, v in info.items() if v}
    if problems:
        raise SystemExit(f"{directory}: transformers reports {problems}")
    reference = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.join(oracle, "tiny_model_sharded"))
    check_same(model.state_dict(), reference.state_dict(), f"{directory} via from_pretrained")


def main():
    oracle, cpp = sys.argv[1], sys.argv[2]
    with open(os.path.join(oracle, "expected.json")) as f:
        max_shard_size = json.load(f)["tiny_model_max_shard_size"]
    check_tensor_files(oracle, cpp)
    state = reference_state(oracle)
    check_sharded(oracle, cpp, state, max_shard_size)
    single = os.path.join(cpp, "model_single")
    if sorted(f for f in os.listdir(single) if f.startswith("model")) != ["model.safetensors"]:
        raise SystemExit(f"{single}: expected model.safetensors alone, found {os.listdir(single)}")
    check_same(load_file(os.path.join(single, "model.safetensors")), state, single)
    for name in ("model_sharded", "model_single"):
        check_transformers_loads(oracle, cpp, name)
    print("safetensors files written by remat match the reference")


if __name__ == "__main__":
    main()
