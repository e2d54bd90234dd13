"""Reference runs of torch.amp.GradScaler on the CPU, for remat::GradScaler.

Each run feeds a fixed sequence of raw gradients for two parameters through
scale() (as backward of a scaled loss would produce them), unscale_(),
step() with SGD and update(), and records per step the scale before, whether
an inf/NaN was found, whether SGD stepped, the scale and growth tracker
after; then the final parameters and state_dict(). Some steps hold an inf, a
NaN, or values that overflow only once scaled.

Writes <out_dir>/<run>.json and the tensors as <run>_tensors.json/.bin
(tests/oracle.h).
"""

import json
import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from oracle_io import write_tensors  # noqa: E402

RUNS = {
    # torch's defaults; the growth interval is never reached.
    "defaults": dict(options={}, steps=12, bad={2: "inf", 5: "nan", 6: "overflow"}),
    # A short interval: the scale grows, backs off, grows again.
    "growth": dict(
        options=dict(init_scale=4.0, growth_factor=2.0, backoff_factor=0.25, growth_interval=3),
        steps=20,
        bad={4: "inf", 5: "overflow", 11: "nan", 17: "overflow"},
    ),
}


def run(out_dir: pathlib.Path, name: str, spec: dict) -> None:
    gen = torch.Generator().manual_seed(len(name))
    params = [torch.nn.Parameter(torch.randn(5, 3, generator=gen)),
              torch.nn.Parameter(torch.randn(7, generator=gen))]
    tensors = {f"param{k}": p.detach().clone() for k, p in enumerate(params)}
    sgd = torch.optim.SGD(params, lr=0.1)
    scaler = torch.amp.GradScaler("cpu", **spec["options"])
    steps = []
    for t in range(spec["steps"]):
        raw = [torch.randn(p.shape, generator=gen) for p in params]
        kind = spec["bad"].get(t)
        if kind == "inf":
            raw[0][1, 2] = float("inf")
        elif kind == "nan":
            raw[1][3] = float("nan")
        elif kind == "overflow":
            raw[1][0] = 3e38  # finite, but not once multiplied by the scale
        for k, g in enumerate(raw):
            tensors[f"grad{t}_{k}"] = g
        scale_before = scaler.get_scale()
        for p, g in zip(params, raw):
            p.grad = scaler.scale(g)
        scaler.unscale_(sgd)
        found = sum(v.item() for v in scaler._found_inf_per_device(sgd).values())
        scaler.step(sgd)
        scaler.update()
        steps.append({"scale_before": scale_before, "found_inf": found, "stepped": found == 0,
                      "scale_after": scaler.get_scale(),
                      "growth_tracker": scaler._get_growth_tracker()})
        sgd.zero_grad()
    for k, p in enumerate(params):
        tensors[f"final{k}"] = p.detach().clone()
    options = dict(init_scale=2.0**16, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000)
    options.update(spec["options"])
    (out_dir / f"{name}.json").write_text(json.dumps(
        {"options": options, "steps": steps, "state_dict": scaler.state_dict()}, indent=1))
    write_tensors(out_dir, f"{name}_tensors", tensors)


def main(out_dir: str) -> None:
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, spec in RUNS.items():
        run(out, name, spec)


if __name__ == "__main__":
    main(sys.argv[1])
