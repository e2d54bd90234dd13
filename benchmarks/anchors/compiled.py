"""Anchor: what an expert PyTorch user would run. torch.compile, fused AdamW,
SDPA, bf16 autocast, a plain training loop; checkpointing through
torch.utils.checkpoint (non-reentrant, one region per block).

GPT-2 shapes use a nanoGPT-style module (the usual fast GPT-2 in PyTorch);
Llama shapes use transformers' LlamaForCausalLM with SDPA. Same random
tokens, learning rate, weight decay (no decay on biases and norms) and
clipping as remat-bench and the Trainer anchor.

  python benchmarks/anchors/compiled.py --preset gpt2-124m --bf16 \
      [--gradient_checkpointing] [--no_compile] --json compiled.json
"""

import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.checkpoint import checkpoint  # noqa: E402


class Block(nn.Module):
    def __init__(self, s):
        super().__init__()
        self.heads = s["heads"]
        self.ln_1 = nn.LayerNorm(s["hidden"])
        self.c_attn = nn.Linear(s["hidden"], 3 * s["hidden"])
        self.attn_proj = nn.Linear(s["hidden"], s["hidden"])
        self.ln_2 = nn.LayerNorm(s["hidden"])
        self.c_fc = nn.Linear(s["hidden"], s["ffn"])
        self.mlp_proj = nn.Linear(s["ffn"], s["hidden"])

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.attn_proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class GPT(nn.Module):
    """nanoGPT's GPT-2: tied head, GPT-2 initialization."""

    def __init__(self, s, checkpointing):
        super().__init__()
        self.checkpointing = checkpointing
        self.wte = nn.Embedding(s["vocab"], s["hidden"])
        self.wpe = nn.Embedding(max(s["seq"], 1024), s["hidden"])
        self.h = nn.ModuleList(Block(s) for _ in range(s["layers"]))
        self.ln_f = nn.LayerNorm(s["hidden"])
        self.lm_head = nn.Linear(s["hidden"], s["vocab"], bias=False)
        self.lm_head.weight = self.wte.weight
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * s["layers"]) if name.endswith("proj.weight") else 0.02
                nn.init.normal_(p, 0.0, std)

    def forward(self, ids, labels):
        x = self.wte(ids) + self.wpe(torch.arange(ids.size(1), device=ids.device))
        for block in self.h:
            x = checkpoint(block, x, use_reentrant=False) if self.checkpointing else block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)).float(),
                               labels[:, 1:].reshape(-1))


def build(shape, checkpointing):
    if shape["arch"] == "gpt2":
        return GPT(shape, checkpointing), True
    import transformers

    config = common.hf_config(shape)
    config._attn_implementation = "sdpa"
    model = transformers.LlamaForCausalLM(config)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model, False


def main():
    args, shape = common.parse_args(
        __doc__.splitlines()[0],
        lambda p: p.add_argument("--no_compile", action="store_true",
                                 help="eager mode (for the CPU smoke run)"))
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    model, tied = build(shape, args.gradient_checkpointing)
    model.to(device).train()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=3e-4,
                                  fused=True)
    if shape["arch"] == "gpt2":
        step_model = model
        loss_of = lambda ids: step_model(ids, ids)  # noqa: E731
    else:
        step_model = model
        loss_of = lambda ids: step_model(input_ids=ids, labels=ids).loss  # noqa: E731
    if not args.no_compile:
        step_model = torch.compile(model)
    data = common.random_tokens(shape, shape["batch"] * (args.warmup + args.steps), args.seed)
    timer = common.StepTimer(args.device, args.warmup)
    losses = []
    for step in range(args.warmup + args.steps):
        ids = data[step * shape["batch"]:(step + 1) * shape["batch"]].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            loss = loss_of(ids)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        timer.step_end()
    r = common.result("torch_compile" if not args.no_compile else "torch_eager", args, shape,
                      model, tied, timer, losses, "adamw_torch_fused")
    r["versions"] = {"torch": torch.__version__}
    common.report(r, args.json)


if __name__ == "__main__":
    main()
