"""remat-finetune on a transformers-saved Llama and a prompt/completion JSONL
file: the eval loss before training equals transformers' loss with the
prompt labelled -100 (so prompts are masked), training lowers it, the saved
directory loads in transformers with the same logits, and bad flags give
errors naming the value.

usage: finetune_hf_dir_test.py REMAT_FINETUNE REMAT_GENERATE WORK_DIR
"""

import json
import os
import shutil
import sys

from fixtures import (PAIRS, compare_logits, masked_loss, masked_loss_tolerance, run, tiny_llama,
                      write_jsonl)


def main():
    finetune, generate, work = sys.argv[1], sys.argv[2], sys.argv[3]
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    model_dir = tiny_llama(os.path.join(work, "tiny-llama"), seed=1)
    train = write_jsonl(os.path.join(work, "train.jsonl"), PAIRS * 4)
    valid = write_jsonl(os.path.join(work, "valid.jsonl"), PAIRS)
    out = os.path.join(work, "out")
    run([finetune, "--model_name_or_path", model_dir, "--train_file", train,
         "--validation_file", valid, "--output_dir", out, "--max_steps", "30",
         "--per_device_train_batch_size", "4", "--learning_rate", "3e-3", "--logging_steps", "10",
         "--report_to", "jsonl", "--gradient_checkpointing", "--benchmark_steps", "1",
         "--max_new_tokens", "4"])
    results = json.load(open(os.path.join(out, "results.json")))
    reference = masked_loss(model_dir, PAIRS)
    before = results["before"]["eval_loss"]
    print(f"eval loss before training: remat {before:.6f}, transformers (prompt masked) {reference:.6f}")
    allowed = masked_loss_tolerance(model_dir, PAIRS)
    assert abs(before - reference) <= allowed, f"prompt tokens are not masked as transformers does (allowed {allowed})"
    after = results["after"]["eval_loss"]
    assert after < before - 0.5, f"training did not lower the eval loss: {before} -> {after}"
    assert masked_loss(out, PAIRS) == masked_loss(out, PAIRS)
    allowed = masked_loss_tolerance(out, PAIRS)
    assert abs(masked_loss(out, PAIRS) - after) <= allowed, f"saved model differs from the trained one (allowed {allowed})"
    assert len(results["checkpointing_tradeoff"]) == 2
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert os.path.exists(os.path.join(out, name)), f"{name} was not saved"
    compare_logits(out, generate, "Q: 2+2? A:", work)

    # A fresh model from a config, with the tokenizer of another directory.
    fresh = os.path.join(work, "fresh")
    run([finetune, "--config_name", os.path.join(model_dir, "config.json"), "--tokenizer_name",
         model_dir, "--train_file", train, "--validation_file", valid, "--output_dir", fresh,
         "--max_steps", "5", "--per_device_train_batch_size", "4", "--benchmark_steps", "0"])
    assert os.path.exists(os.path.join(fresh, "tokenizer.json")), "the tokenizer was not copied"
    compare_logits(fresh, generate, "Q: 2+2? A:", work)

    bad = [
        (["--model_name_or_path", os.path.join(work, "nope"), "--train_file", train], "nope"),
        (["--model_name_or_path", model_dir, "--train_file", os.path.join(work, "x.csv")], "x.csv"),
        (["--model_name_or_path", model_dir], "--train_file is required"),
        (["--model_name_or_path", model_dir, "--train_file", train, "--max_seq_length", "4096"],
         "--max_seq_length 4096"),
        (["--model_name_or_path", model_dir, "--train_file", train, "--lr_scheduler_type", "bogus"],
         "bogus"),
        (["--model_name_or_path", model_dir, "--train_file", train, "--top_p", "2"], "--top_p 2"),
        # A tokenizer larger than the model's embedding, refused at start-up.
        (["--model_name_or_path", tiny_llama(os.path.join(work, "small-vocab"), vocab_size=200),
          "--train_file", train], "the tokenizer has 259 tokens, model vocab_size 200"),
    ]
    for flags, needle in bad:
        proc = run([finetune, "--output_dir", os.path.join(work, "bad")] + flags, expect_ok=False)
        assert proc.returncode != 0 and needle in proc.stderr, f"no clear error for {flags}"
    print("remat-finetune trains a transformers directory with masked prompts")


if __name__ == "__main__":
    main()
