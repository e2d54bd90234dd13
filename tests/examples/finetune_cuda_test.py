"""On a CUDA machine, remat-finetune's embedded default runs on the GPU by
itself, learns, and reports the allocator's peak memory; the step with
checkpointing on holds less memory than without. Skipped (exit 77) without
CUDA.

usage: finetune_cuda_test.py REMAT_FINETUNE WORK_DIR
"""

import json
import os
import shutil
import sys

import torch

from fixtures import run


def main():
    if not torch.cuda.is_available():
        print("no CUDA device: skipped")
        sys.exit(77)
    finetune, work = sys.argv[1], sys.argv[2]
    shutil.rmtree(work, ignore_errors=True)
    out = os.path.join(work, "out")
    run([finetune, "--output_dir", out, "--max_steps", "500", "--num_train_examples", "32000"])
    results = json.load(open(os.path.join(out, "results.json")))
    print(json.dumps(results, indent=2))
    assert results["device"].startswith("cuda"), f"ran on {results['device']}, not CUDA"
    assert results["after"]["eval_accuracy"] >= 0.5, "the model did not learn on CUDA"
    assert results["peak_memory_mib"] > 0
    off, on = results["checkpointing_tradeoff"]
    assert on["memory_mib"] < off["memory_mib"], "checkpointing did not lower the CUDA peak"


if __name__ == "__main__":
    main()
