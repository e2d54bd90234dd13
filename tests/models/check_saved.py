"""transformers loads the directories remat saved and computes the same logits.

Runs the C++ SavePretrainedRoundTrips tests (which save each oracle model with
remat's save_pretrained and record remat's logits), then loads every saved
directory with transformers and compares.

usage: check_saved.py ORACLE_DIR MODELS_TEST_BINARY
"""

import os
import subprocess
import sys

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM


def main():
    oracle, binary = sys.argv[1], sys.argv[2]
    saved_root = os.path.join(oracle, "models-saved-for-transformers")
    env = dict(os.environ, REMAT_ORACLE_DIR=oracle, REMAT_MODELS_SAVE_DIR=saved_root)
    subprocess.run([binary, "--gtest_filter=*SavePretrainedRoundTrips*"], check=True, env=env)
    names = sorted(os.listdir(saved_root))
    assert names, "remat saved no model"
    for name in names:
        path = os.path.join(saved_root, name)
        remat = load_file(os.path.join(path, "remat_logits.safetensors"))
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        with torch.no_grad():
            logits = model(input_ids=remat["input_ids"]).logits
        diff = (logits - remat["logits"]).abs().max().item()
        # The same float32 forward in other orders: 2 gamma_n of max |logit|,
        # n the longest chain of roundings (tests/support.h's transformer_chain).
        c, ids = model.config, remat["input_ids"]
        hidden = c.hidden_size
        head_dim = getattr(c, "head_dim", None) or hidden // c.num_attention_heads
        intermediate = getattr(c, "intermediate_size", None) or getattr(c, "n_inner", None) or 4 * hidden
        n = (c.num_hidden_layers * (7 * hidden + head_dim + 2 * ids.shape[1] + intermediate)
             + 3 * hidden + c.vocab_size + ids.numel())
        allowed = 2 * n * 2.0**-24 / (1 - n * 2.0**-24) * logits.abs().max().item()
        print(f"{name}: max |transformers - remat| = {diff:.3g} (allowed {allowed:.3g})")
        assert diff <= allowed, f"{name}: transformers disagrees with remat by {diff}, allowed {allowed}"
    print(f"{len(names)} saved directories load in transformers with the same logits")


if __name__ == "__main__":
    main()
