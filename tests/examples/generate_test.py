"""remat-generate on a transformers-saved directory gives transformers'
greedy tokens, token for token, and seeded sampling is reproducible.

usage: generate_test.py REMAT_GENERATE WORK_DIR
"""

import os
import shutil
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from fixtures import compare_logits, run, tiny_llama


def ids_line(stdout, key):
    for line in stdout.splitlines():
        if line.startswith(key + ":"):
            return [int(t) for t in line.split(":", 1)[1].split()]
    raise AssertionError(f"no {key} line in the output")


def main():
    binary, work = sys.argv[1], sys.argv[2]
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    model_dir = tiny_llama(os.path.join(work, "tiny-llama"))
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()

    for prompt in ["Hello world", "123+456=", "a"]:
        proc = run([binary, "--model_name_or_path", model_dir, "--prompt", prompt,
                    "--max_new_tokens", "16", "--print_ids"])
        ids = tok(prompt, return_tensors="pt")["input_ids"]
        assert ids_line(proc.stdout, "prompt_ids") == ids[0].tolist()
        with torch.no_grad():
            reference = model.generate(ids, max_new_tokens=16, do_sample=False, pad_token_id=0)
        expected = reference[0, ids.shape[1]:].tolist()
        got = ids_line(proc.stdout, "generated_ids")
        print(f"{prompt!r}: transformers {expected}\n{' ' * len(repr(prompt))}  remat        {got}")
        assert got == expected, "greedy tokens differ from transformers'"
        assert len(got) >= 2

    sample = [binary, "--model_name_or_path", model_dir, "--prompt", "abc", "--do_sample",
              "--temperature", "0.9", "--top_k", "20", "--top_p", "0.95", "--max_new_tokens", "24",
              "--print_ids"]
    a = ids_line(run(sample + ["--seed", "7"]).stdout, "generated_ids")
    b = ids_line(run(sample + ["--seed", "7"]).stdout, "generated_ids")
    c = ids_line(run(sample + ["--seed", "8"]).stdout, "generated_ids")
    assert a == b, "the same seed sampled different tokens"
    assert a != c, "different seeds sampled the same 24 tokens"

    compare_logits(model_dir, binary, "The quick brown fox", work)

    missing = os.path.join(work, "missing")
    for directory, flags, needle in [(model_dir, ["--top_p", "1.5"], "--top_p 1.5"),
                                     (model_dir, ["--temperature", "0"], "--temperature 0"),
                                     (missing, [], f"--model_name_or_path {missing}")]:
        cmd = [binary, "--model_name_or_path", directory, "--prompt", "x"] + flags
        proc = run(cmd, expect_ok=False)
        assert proc.returncode != 0 and needle in proc.stderr, f"no clear error for {flags}"
    print("remat-generate matches transformers")


if __name__ == "__main__":
    main()
