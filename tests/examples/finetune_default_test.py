"""The embedded default of remat-finetune, shortened: the eval loss falls,
held-out exact-match accuracy rises, the metrics land in log.jsonl, the
saved directory loads in transformers with remat's logits, and `--help`
lists every TrainingArguments field.

usage: finetune_default_test.py REMAT_FINETUNE REMAT_GENERATE WORK_DIR MAX_STEPS
"""

import json
import os
import shutil
import sys

from fixtures import compare_logits, run


def main():
    finetune, generate, work, steps = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    out = os.path.join(work, "out")
    proc = run([finetune, "--output_dir", out, "--max_steps", steps, "--benchmark_steps", "2",
                "--num_train_examples", str(64 * int(steps))])
    for line in ("eval loss", "exact-match accuracy", "tokens/s", "peak memory", "sample:"):
        assert line in proc.stdout, f"the report lacks {line!r}"
    results = json.load(open(os.path.join(out, "results.json")))
    before, after = results["before"], results["after"]
    print(f"eval loss {before['eval_loss']:.4f} -> {after['eval_loss']:.4f}, "
          f"accuracy {before['eval_accuracy']:.3f} -> {after['eval_accuracy']:.3f}")
    assert after["eval_loss"] < before["eval_loss"] - 1.0, "the eval loss did not fall"
    assert after["eval_accuracy"] >= before["eval_accuracy"] + 0.5, "the accuracy did not rise"
    assert results["global_step"] == int(steps)
    assert results["tokens_per_s"] > 0 and results["peak_memory_mib"] > 0
    table = results["checkpointing_tradeoff"]
    assert [row["gradient_checkpointing"] for row in table] == [False, True]
    assert table[1]["memory_mib"] < table[0]["memory_mib"], "checkpointing did not save memory"

    records = [json.loads(line) for line in open(os.path.join(out, "log.jsonl"))]
    assert any("loss" in r and "tokens_per_s" in r for r in records), "no training records"
    assert [r["eval_accuracy"] for r in records if "eval_accuracy" in r] == [
        before["eval_accuracy"], after["eval_accuracy"]]
    args = json.load(open(os.path.join(out, "training_args.json")))
    assert args["gradient_checkpointing"] is True

    # The saved directory: transformers loads it and computes remat's logits.
    compare_logits(out, generate, "74+50=", work)
    # The optional TensorBoard files, when the Trainer writes them.
    events = [f for f in os.listdir(out) if "tfevents" in f]
    print("tensorboard event files:", events)

    # --help lists every TrainingArguments field, with the program's own flags.
    help_text = run([finetune, "--help"]).stdout
    missing = [name for name in args if f"--{name}" not in help_text]
    assert not missing, f"--help lacks {missing}"
    for flag in ("--model_name_or_path", "--config_name", "--tokenizer_name", "--train_file",
                 "--validation_file", "--max_seq_length", "--packing", "--max_new_tokens",
                 "--do_sample", "--temperature", "--top_k", "--top_p"):
        assert flag in help_text, f"--help lacks {flag}"
    print("the embedded default learns")


if __name__ == "__main__":
    main()
