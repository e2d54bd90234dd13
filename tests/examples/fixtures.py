"""Shared fixtures of the example tests: a tiny transformers-saved Llama with
the embedded default's byte-level tokenizer, and prompt/completion files."""

import json
import os
import shutil
import subprocess

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_DIR = os.path.join(ROOT, "examples", "finetune", "default")

U32 = 2.0 ** -24  # float32's unit roundoff


def reduction_tolerance(n, scale, u=U32):
    """2 gamma_n scale, gamma_n = n u / (1 - n u): the largest difference
    between two float32 evaluations of a length-n reduction in different
    orders, `scale` being sum|terms| (as tests/support.h)."""
    return 2 * n * u / (1 - n * u) * scale


def forward_chain(config, seq, tokens):
    """tests/support.h's transformer_chain for a transformers config: the
    longest chain of roundings from the inputs to the loss."""
    hidden = config.hidden_size
    head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    intermediate = (getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None)
                    or 4 * hidden)
    layer = 4 * hidden + head_dim + 2 * seq + 3 * hidden + intermediate
    return config.num_hidden_layers * layer + 3 * hidden + config.vocab_size + tokens


def tiny_llama(path, seed=0, vocab_size=259):
    """A randomly initialized LlamaForCausalLM saved by transformers, with tokenizer files
    (the default's 259 tokens; a smaller vocab_size leaves some without an embedding)."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    # Larger weights than the default init, so that greedy decoding is not
    # a near-tie everywhere.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.2)
    model.save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(DEFAULT_DIR, name), os.path.join(path, name))
    return path


PAIRS = [
    ("Q: capital of France? A:", " Paris"),
    ("Q: 2+2? A:", " 4"),
    ("Q: colour of the sky? A:", " blue"),
    ("Q: opposite of hot? A:", " cold"),
    ("Q: first letter? A:", " a"),
    ("Q: days in a week? A:", " seven"),
]


def write_jsonl(path, pairs):
    with open(path, "w") as f:
        for prompt, completion in pairs:
            f.write(json.dumps({"prompt": prompt, "completion": completion}) + "\n")
    return path


def masked_batches(tok, pairs):
    """(input_ids, labels) of each pair, the prompt (and BOS) labelled -100."""
    for prompt, completion in pairs:
        prompt_ids = [tok.bos_token_id] + tok(prompt, add_special_tokens=False)["input_ids"]
        answer_ids = tok(completion, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        yield (torch.tensor([prompt_ids + answer_ids]),
               torch.tensor([[-100] * len(prompt_ids) + answer_ids]))


def masked_loss(model_dir, pairs):
    """transformers' loss per target token over `pairs`, the prompt (and BOS)
    labelled -100: what remat's Trainer.evaluate() must report."""
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    total, count = 0.0, 0
    for ids, labels in masked_batches(tok, pairs):
        with torch.no_grad():
            logits = model(input_ids=ids).logits
        losses = torch.nn.functional.cross_entropy(
            logits[0, :-1], labels[0, 1:], ignore_index=-100, reduction="sum")
        total += losses.item()
        count += int((labels[0, 1:] != -100).sum())
    return total / count


def masked_loss_tolerance(model_dir, pairs):
    """How far remat's masked loss may be from masked_loss() in float32: each
    logit within 2 gamma_chain of max |logit| (the forward in other orders,
    over the longest pair and all the pairs' tokens), a token's
    cross-entropy moves by at most twice its largest logit change, and the
    mean over the tokens adds 2 gamma_count of the loss."""
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    batches = list(masked_batches(tok, pairs))
    seq = max(ids.shape[1] for ids, _ in batches)
    tokens = sum(ids.numel() for ids, _ in batches)
    with torch.no_grad():
        scale = max(model(input_ids=ids).logits.abs().max().item() for ids, _ in batches)
    count = sum(int((labels[0, 1:] != -100).sum()) for _, labels in batches)
    loss = masked_loss(model_dir, pairs)
    return (2 * reduction_tolerance(forward_chain(model.config, seq, tokens), scale)
            + reduction_tolerance(count, loss))


def run(cmd, expect_ok=True):
    print("$", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    print(proc.stdout[-4000:], proc.stderr[-4000:], flush=True)
    if expect_ok:
        assert proc.returncode == 0, f"{cmd[0]} failed with {proc.returncode}"
    return proc


def compare_logits(model_dir, generate_bin, prompt, tmp):
    """remat's logits of `prompt` (via remat-generate) equal transformers'."""
    from safetensors.torch import load_file
    logits_file = os.path.join(tmp, "logits.safetensors")
    run([generate_bin, "--model_name_or_path", model_dir, "--prompt", prompt,
         "--max_new_tokens", "1", "--logits_file", logits_file])
    remat = load_file(logits_file)["logits"]
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        ids = torch.tensor([tok(prompt)["input_ids"]])
        reference = model(input_ids=ids).logits
    diff = (reference - remat).abs().max().item()
    # The same float32 forward in other orders: 2 gamma_chain of max |logit|.
    allowed = reduction_tolerance(forward_chain(model.config, ids.shape[1], ids.numel()),
                                  reference.abs().max().item())
    print(f"max |transformers - remat| logits = {diff:.3g} (allowed {allowed:.3g})")
    assert diff <= allowed, f"logits differ by {diff}, allowed {allowed}"
