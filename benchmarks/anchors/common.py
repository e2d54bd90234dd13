"""Shapes, timing and the result record shared by the Python anchors.

The presets, flags, FLOPs count and JSON fields are those of remat-bench
(benchmarks/remat_bench.cpp), so benchmarks/compare.py can put the rows side
by side.
"""

import argparse
import json
import statistics
import time

import torch

PRESETS = {
    "gpt2-124m": dict(arch="gpt2", layers=12, hidden=768, heads=12, kv_heads=12, ffn=3072,
                      vocab=50304, batch=16, seq=1024),
    "llama-0.85b": dict(arch="llama", layers=16, hidden=2048, heads=32, kv_heads=8, ffn=5632,
                        vocab=32000, batch=4, seq=2048),
    "tiny": dict(arch="gpt2", layers=2, hidden=64, heads=4, kv_heads=0, ffn=256, vocab=256,
                 batch=2, seq=32),
}


def parse_args(description, extra=None):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    p.add_argument("--arch", choices=["gpt2", "llama"])
    for name in ["layers", "hidden", "heads", "kv_heads", "ffn", "vocab", "batch", "seq"]:
        p.add_argument("--" + name, type=int)
    p.add_argument("--steps", type=int, default=10, help="timed optimizer steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--gradient_checkpointing", action="store_true")
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="append the result to this JSON array file")
    if extra:
        extra(p)
    args = p.parse_args()
    shape = dict(PRESETS[args.preset])
    for key in list(shape):
        if getattr(args, key, None) is not None:
            shape[key] = getattr(args, key)
    if shape["kv_heads"] <= 0:
        shape["kv_heads"] = shape["heads"]
    return args, shape


def hf_config(shape):
    """The transformers config of the shape; dropout off, as in remat-bench."""
    import transformers

    if shape["arch"] == "gpt2":
        return transformers.GPT2Config(
            n_layer=shape["layers"], n_embd=shape["hidden"], n_head=shape["heads"],
            n_inner=shape["ffn"], vocab_size=shape["vocab"],
            n_positions=max(shape["seq"], 1024), attn_pdrop=0.0, resid_pdrop=0.0,
            embd_pdrop=0.0)
    return transformers.LlamaConfig(
        num_hidden_layers=shape["layers"], hidden_size=shape["hidden"],
        num_attention_heads=shape["heads"], num_key_value_heads=shape["kv_heads"],
        intermediate_size=shape["ffn"], vocab_size=shape["vocab"],
        max_position_embeddings=max(shape["seq"], 2048), tie_word_embeddings=False)


def random_tokens(shape, count, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, shape["vocab"], (count, shape["seq"]), generator=g)


def matmul_params(model, shape, tied):
    """Weights a token is multiplied by: all but lookup-only embeddings."""
    total = 0
    for name, p in model.named_parameters():
        lookup = name.endswith("wpe.weight") or (
            name.endswith("embed_tokens.weight") and not tied)
        if not lookup:
            total += p.numel()
    return total


def peak_flops(device_name, bf16):
    """remat/flops.h's table."""
    if "H100" in device_name and ("PCIe" in device_name or "PCIE" in device_name):
        return 756e12 if bf16 else 51e12
    if "H100" in device_name or "H200" in device_name:
        return 989.4e12 if bf16 else 67e12
    if "A100" in device_name:
        return 312e12 if bf16 else 19.5e12
    return None


class StepTimer:
    """End time of every optimizer step (CUDA synchronized); resets the peak
    after the warm-up."""

    def __init__(self, device, warmup):
        self.device = torch.device(device)
        self.warmup = warmup
        self.start = time.perf_counter()
        self.ends = []

    def step_end(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.ends.append(time.perf_counter())
        if len(self.ends) == self.warmup and self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def step_ms(self):
        times = [self.start] + self.ends
        return [1000 * (times[i + 1] - times[i]) for i in range(self.warmup, len(self.ends))]


def result(framework, args, shape, model, tied, timer, losses, optim):
    step_ms = timer.step_ms()
    median = statistics.median(step_ms) if step_ms else 0.0
    tokens = shape["batch"] * shape["seq"]
    tokens_per_s = tokens / (median / 1000) if median > 0 else 0.0
    params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    flops = 6.0 * matmul_params(model, shape, tied) + 12.0 * shape["layers"] * shape["hidden"] * shape["seq"]
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = peak_flops(name, args.bf16)
    model_state = 16.0 * params / 2**20
    r = dict(framework=framework, **{k: v for k, v in shape.items()}, bf16=args.bf16,
             optim=optim, policy="full" if args.gradient_checkpointing else "none",
             device=name, params=params, warmup=args.warmup, steps=args.steps,
             step_ms=step_ms, median_step_ms=median, tokens_per_s=tokens_per_s,
             model_state_mib=model_state, activation_floor_mib=None, losses=losses,
             final_loss=losses[-1] if losses else None, flops_per_token=flops,
             mfu=flops * tokens_per_s / peak if peak else None)
    if device.type == "cuda":
        peak_mib = torch.cuda.max_memory_allocated(device) / 2**20
        r.update(peak_allocated_mib=peak_mib, peak_minus_model_state_mib=peak_mib - model_state)
    else:
        r.update(peak_allocated_mib=None, peak_minus_model_state_mib=None)
    return r


def report(r, path):
    print(f"{r['framework']} {r['arch']} policy {r['policy']}: {r['median_step_ms']:.1f} ms, "
          f"{r['tokens_per_s']:.0f} tokens/s, peak {r['peak_allocated_mib']} MiB, "
          f"final loss {r['final_loss']}")
    if not path:
        return
    try:
        with open(path) as f:
            rows = json.load(f)
    except FileNotFoundError:
        rows = []
    rows.append(r)
    with open(path, "w") as f:
        json.dump(rows, f, indent=2)
