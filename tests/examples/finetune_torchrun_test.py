"""remat-finetune launched by `torchrun --no-python` on two CPU processes
(Gloo): both ranks train, rank 0 alone prints and writes, and the saved
directory loads in transformers.

usage: finetune_torchrun_test.py TORCHRUN REMAT_FINETUNE WORK_DIR
"""

import json
import os
import shutil
import socket
import sys

from fixtures import run


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    torchrun, finetune, work = sys.argv[1:4]
    shutil.rmtree(work, ignore_errors=True)
    out = os.path.join(work, "out")
    proc = run(["timeout", "600", torchrun, "--no-python", "--nproc-per-node", "2",
                "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
                finetune, "--output_dir", out, "--max_steps", "30", "--logging_steps", "10",
                "--report_to", "jsonl", "--benchmark_steps", "0",
                "--max_eval_generations", "10"])
    # One summary (rank 0's), not one per rank.
    assert proc.stdout.count("exact-match accuracy") == 1, proc.stdout
    records = [json.loads(line) for line in open(os.path.join(out, "log.jsonl"))]
    steps = [r["step"] for r in records if "loss" in r and "train_loss" not in r]
    assert steps == [10, 20, 30], steps
    losses = [r["loss"] for r in records if "loss" in r and "train_loss" not in r]
    assert losses[-1] < losses[0], losses
    results = json.load(open(os.path.join(out, "results.json")))
    assert results["global_step"] == 30, results

    import torch
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(out)
    with torch.no_grad():
        logits = model(torch.tensor([[5, 6, 7]])).logits
    assert torch.isfinite(logits).all()
    print("torchrun fine-tune: losses", losses)


if __name__ == "__main__":
    main()
