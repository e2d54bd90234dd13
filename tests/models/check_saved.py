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
        print(f"{name}: max |transformers - remat| = {diff:.3g}")
        assert diff <= 1e-5, f"{name}: transformers disagrees with remat by {diff}"
    print(f"{len(names)} saved directories load in transformers with the same logits")


if __name__ == "__main__":
    main()
