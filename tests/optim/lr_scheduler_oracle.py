"""Reference learning rates from transformers.get_scheduler.

Writes <out>/schedules.json: for every case (schedule type, warmup, total
steps, kwargs), the learning rate of each param group right after the
scheduler is built and after each scheduler.step(), as the Trainer steps it
(optimizer.step(), then scheduler.step()), two steps past the end.
"""

import json
import pathlib
import sys

import torch
from transformers import get_scheduler

LRS = [1e-3, 5e-4]  # param group 0 (the optimizer's default lr) and group 1

CASES = []


def case(name, warmup, total, **kwargs):
    CASES.append({"name": name, "num_warmup_steps": warmup, "num_training_steps": total,
                  "kwargs": kwargs})


STEPS = [(0, 10), (3, 10), (10, 10), (12, 10), (5, 37), (1, 2)]
for warmup, total in STEPS:
    case("linear", warmup, total)
    case("cosine", warmup, total)
    case("constant_with_warmup", warmup, total)
    case("cosine_with_restarts", warmup, total)
    case("cosine_with_min_lr", warmup, total, min_lr=1e-5)
    case("cosine_warmup_with_min_lr", warmup, total, min_lr_rate=0.1)
    if warmup != total:  # transformers divides by zero at the last step otherwise
        case("polynomial", warmup, total)
for num_cycles in [1.0, 2.5, 0.25]:
    case("cosine", 4, 30, num_cycles=num_cycles)
for num_cycles in [3, 2.5]:
    case("cosine_with_restarts", 2, 25, num_cycles=num_cycles)
case("polynomial", 3, 20, power=2.0, lr_end=1e-4)
case("polynomial", 0, 15, power=0.5)
case("polynomial", 2, 9, power=3, lr_end=0)
case("constant", 0, 8)
case("constant", 3, None)
case("inverse_sqrt", 0, None)
case("inverse_sqrt", 4, 20)
case("inverse_sqrt", 3, 20, timescale=7)
case("inverse_sqrt", 0, 12, timescale=2.5)
case("cosine_with_min_lr", 3, 20, min_lr_rate=0.1)
case("cosine_with_min_lr", 2, 20, num_cycles=1.0, min_lr_rate=0.2)
case("cosine_warmup_with_min_lr", 4, 20, min_lr=2e-5, warmup_lr_rate=0.05)
case("cosine_warmup_with_min_lr", 1, 12, min_lr_rate=0.3, warmup_lr_rate=0.5)
case("warmup_stable_decay", 3, 20, num_decay_steps=5)
case("warmup_stable_decay", 4, 20, num_decay_steps=6, warmup_type="cosine", decay_type="1-sqrt",
     min_lr_ratio=0.1)
case("warmup_stable_decay", 2, None, num_decay_steps=4, num_stable_steps=3, warmup_type="1-sqrt",
     decay_type="linear")
case("warmup_stable_decay", 0, 16, num_decay_steps=8, decay_type="cosine", num_cycles=1.0,
     min_lr_ratio=0.05)


def run(c):
    params = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))]
    optimizer = torch.optim.SGD(
        [{"params": [params[0]]}, {"params": [params[1]], "lr": LRS[1]}], lr=LRS[0])
    scheduler = get_scheduler(c["name"], optimizer, num_warmup_steps=c["num_warmup_steps"],
                              num_training_steps=c["num_training_steps"],
                              scheduler_specific_kwargs=dict(c["kwargs"]))
    lrs = [scheduler.get_last_lr()]
    total = c["num_training_steps"] if c["num_training_steps"] is not None else 20
    for _ in range(total + 2):
        optimizer.step()
        scheduler.step()
        lrs.append(scheduler.get_last_lr())
    state = scheduler.state_dict()
    return dict(c, lr=LRS, lrs=lrs, state={"last_epoch": state["last_epoch"],
                                           "base_lrs": state["base_lrs"]})


def main():
    out = pathlib.Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    results = [run(c) for c in CASES]
    (out / "schedules.json").write_text(json.dumps(results, indent=1))
    print(f"wrote {len(results)} schedules to {out}")


if __name__ == "__main__":
    main()
