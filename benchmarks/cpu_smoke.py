"""CPU smoke run of the benchmark harness on a tiny shape: remat-bench under
every policy (GPT-2 with --profile 1 and a trace per policy), both anchors
(the compiled one in eager mode) with checkpointing off and on, then
compare.py. Fails when a run fails, a field is missing, a profile is empty,
or remat's policies do not train the same (on CPU their losses are bitwise
equal).

  python benchmarks/cpu_smoke.py path/to/remat-bench WORKDIR
"""

import json
import os
import subprocess
import sys

here = os.path.dirname(os.path.abspath(__file__))
bench, work = sys.argv[1], sys.argv[2]
os.makedirs(work, exist_ok=True)
paths = {name: os.path.join(work, name + ".json") for name in ("remat", "hf", "compiled")}
traces = {policy: os.path.join(work, f"trace.{policy}.json")
          for policy in ("none", "full", "every-2", "attention", "mlp", "mlp-up")}
for path in [*paths.values(), *traces.values()]:
    if os.path.exists(path):
        os.remove(path)
tiny = ["--steps", "2", "--warmup", "1"]


def run(*command):
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True)


run(bench, "--preset", "tiny", "--layers", "4", "--device", "cpu", *tiny, "--policy",
    "none,full,every-2,attention,mlp,mlp-up", "--profile", "1", "--profile_trace",
    os.path.join(work, "trace.json"), "--json", paths["remat"])
run(bench, "--preset", "tiny", "--arch", "llama", "--kv_heads", "2", "--device", "cpu", "--bf16",
    *tiny, "--policy", "none,full,attention,mlp-up", "--json", os.path.join(work, "remat_llama.json"))
for gc in ([], ["--gradient_checkpointing"]):
    run(sys.executable, os.path.join(here, "anchors", "hf_trainer.py"), "--device", "cpu", *tiny,
        *gc, "--json", paths["hf"])
    run(sys.executable, os.path.join(here, "anchors", "compiled.py"), "--device", "cpu",
        "--no_compile", *tiny, *gc, "--json", paths["compiled"])
markdown = os.path.join(work, "comparison.md")
run(sys.executable, os.path.join(here, "compare.py"), *paths.values(),
    os.path.join(work, "remat_llama.json"), "--markdown", markdown, "--png",
    os.path.join(work, "comparison.png"))

fields = ["framework", "policy", "median_step_ms", "tokens_per_s", "mfu", "peak_allocated_mib",
          "peak_minus_model_state_mib", "activation_floor_mib", "final_loss", "losses", "step_ms"]
remat = json.load(open(paths["remat"]))
assert [r["policy"] for r in remat] == ["none", "full", "every-2", "attention", "mlp", "mlp-up"], remat
for name, path in paths.items():
    rows = json.load(open(path))
    assert rows, name
    for r in rows:
        missing = [f for f in fields if f not in r]
        assert not missing, f"{name} lacks {missing}"
        assert len(r["step_ms"]) == 2 and len(r["losses"]) == 3, (name, r)
        assert r["median_step_ms"] > 0 and r["tokens_per_s"] > 0, (name, r)
assert [r["policy"] for r in json.load(open(paths["hf"]))] == ["none", "full"]
losses = {r["policy"]: r["losses"] for r in remat}
assert all(v == losses["none"] for v in losses.values()), losses
assert all(r["activation_floor_mib"] > 0 for r in remat)
floors = {r["policy"]: r["activation_floor_mib"] for r in remat}
assert floors["full"] < floors["every-2"] < floors["none"], floors
# The profiled step comes after the timed ones (step_ms and losses above
# count only those) and sees the top-level aten:: operators on CPU.
for r in remat:
    p = r["profile"]
    assert p["source"] == "cpu_ops" and p["steps"] == 1, p
    assert p["total_ms_per_step"] > 0 and p["busy_ms_per_step"] > 0, p
    assert p["wall_ms_per_step"] > 0 and p["launches_per_step"] > 0 and p["top"], p
    by_category = {c["category"]: c for c in p["categories"]}
    assert by_category["gemm"]["ms_per_step"] > 0, p
    assert by_category["optimizer"]["count_per_step"] >= 1, p
    # Each percentage one float64 rounding, then a sum of k: gamma_k of 100.
    k = len(p["categories"])
    assert abs(sum(c["percent"] for c in p["categories"]) - 100) <= k * 2.0**-53 / (1 - k * 2.0**-53) * 100, p
    assert p["trace"] == traces[r["policy"]] and os.path.getsize(p["trace"]) > 0, p
llama = json.load(open(os.path.join(work, "remat_llama.json")))
assert not any("profile" in r for r in llama), "no --profile, no profile"
assert llama[0]["losses"] == llama[1]["losses"], llama
# Checkpointing only Llama's attention or MLP under bf16 autocast changes
# the gradients by bf16 rounding (known; whole layers are bitwise equal), so
# the first step's loss, before any update, is bitwise the same, and the
# later ones follow the training trajectory: within 1e-3 relative is a check
# that the policies train alike, not a rounding bound (none exists for a
# trajectory through AdamW).
for row in llama[2:]:
    assert row["losses"][0] == llama[0]["losses"][0], row
    assert all(abs(a - b) <= 1e-3 * abs(b) for a, b in zip(row["losses"], llama[0]["losses"])), row
report = open(markdown).read()
for text in ("| remat | none |", "| remat | mlp |", "| HF Trainer | full |",
             "| PyTorch eager | none |", "### Where the time goes",
             "| remat | none (cpu_ops) | 1 |"):
    assert text in report, text
print("cpu smoke run: ok")
