"""Reference for remat::optim::create_adamw: a tiny model's Hugging Face
parameter groups and its parameters after three torch.optim.AdamW steps.

Writes to <out>:
  groups.json   decay names (Trainer.get_decay_parameter_names), the names in
                each of the Trainer's two param groups, the losses per step
  init.*        initial parameters (by named_parameters name) and the batch
  steps.*       "<step>/<name>": parameters after each step, torch.optim.AdamW
  fused.*       the same with fused=True (the Trainer's default optimizer)
"""

import json
import pathlib
import sys

import torch
from torch import nn
from transformers import Trainer

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from oracle_io import write_tensors  # noqa: E402

VOCAB, DIM, SEQ, BATCH, STEPS = 11, 8, 5, 3, 3
ADAMW = {"lr": 1e-3, "betas": (0.9, 0.95), "eps": 1e-8}
WEIGHT_DECAY = 0.1


class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.input_layernorm = RMSNorm(DIM)  # no decay: "layernorm" in the name
        self.attn = nn.Linear(DIM, DIM)
        self.attn_norm = RMSNorm(DIM)  # no decay: "_norm"
        self.norm1 = nn.LayerNorm(DIM)  # no decay: a LayerNorm
        self.up = nn.Linear(DIM, 2 * DIM)
        self.down = nn.Linear(2 * DIM, DIM, bias=False)
        self.gate_scale = RMSNorm(DIM)  # decay: an RMSNorm, but not named as one

    def forward(self, h):
        h = h + self.attn(self.attn_norm(self.input_layernorm(h)))
        h = self.norm1(h)
        return h + self.down(torch.nn.functional.gelu(self.up(h))) * self.gate_scale(h)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM)
        self.pos = nn.Parameter(torch.randn(SEQ, DIM) * 0.1)  # decay: a root parameter
        self.layers = nn.ModuleList([Block(), Block()])
        self.frozen = nn.Linear(DIM, DIM)  # in no group
        self.frozen.requires_grad_(False)
        self.norm = RMSNorm(DIM)  # no decay: "norm"
        self.normal_head = nn.Linear(DIM, DIM)  # decay for the weight: "normal" is not "norm"
        self.lm_head = nn.Linear(DIM, VOCAB, bias=False)
        self.lm_head.weight = self.embed.weight  # tied: listed once, as embed.weight

    def forward(self, ids):
        h = self.embed(ids) + self.pos[: ids.shape[1]]
        for layer in self.layers:
            h = layer(h)
        h = h + 0.5 * self.frozen(h)
        return self.lm_head(self.normal_head(self.norm(h)))


def trainer_groups(model):
    decay = Trainer.get_decay_parameter_names(None, model)
    named = list(model.named_parameters())
    groups = [[n for n, p in named if n in decay and p.requires_grad],
              [n for n, p in named if n not in decay and p.requires_grad]]
    return decay, groups


def train(model, ids, targets, groups, **extra):
    by_name = dict(model.named_parameters())
    optimizer = torch.optim.AdamW(
        [{"params": [by_name[n] for n in groups[0]], "weight_decay": WEIGHT_DECAY},
         {"params": [by_name[n] for n in groups[1]], "weight_decay": 0.0}], **ADAMW, **extra)
    snapshots, losses = {}, []
    for step in range(1, STEPS + 1):
        logits = model(ids)
        loss = nn.functional.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
        for name, p in model.named_parameters():
            snapshots[f"{step}/{name}"] = p.detach().clone()
    return snapshots, losses


def main():
    out = pathlib.Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = Tiny()
    with torch.no_grad():  # move the norms off 1 and the biases off 0
        for name, p in model.named_parameters():
            p.add_(torch.randn_like(p) * 0.1)
    ids = torch.randint(0, VOCAB, (BATCH, SEQ))
    targets = torch.randint(0, VOCAB, (BATCH, SEQ))
    init = {n: p.detach().clone() for n, p in model.named_parameters()}
    write_tensors(out, "init", {**init, "input_ids": ids, "targets": targets})

    decay, groups = trainer_groups(model)
    steps, losses = train(model, ids, targets, groups)
    write_tensors(out, "steps", steps)
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(init[n])
    fused, fused_losses = train(model, ids, targets, groups, fused=True)
    write_tensors(out, "fused", fused)
    (out / "groups.json").write_text(json.dumps(
        {"decay": decay, "groups": groups, "losses": losses, "fused_losses": fused_losses,
         "weight_decay": WEIGHT_DECAY, "lr": ADAMW["lr"], "betas": ADAMW["betas"],
         "eps": ADAMW["eps"], "steps": STEPS}, indent=1))
    print(f"decay: {decay}\ngroups: {groups}\nlosses: {losses}")


if __name__ == "__main__":
    main()
