"""Puts remat-bench and the anchors side by side: a markdown report and a
plot of peak memory against step time, per model and policy.

  python benchmarks/compare.py OUT/remat.json OUT/hf.json OUT/compiled.json \
      --markdown OUT/comparison.md --png OUT/comparison.png

Every input is a JSON array of result records (remat-bench --json, or the
anchors' --json). The report checks the targets of docs/benchmarks.md where
the rows they need are present, and where records hold a profile
(remat-bench --profile K) it adds a "Where the time goes" table per model.
Without matplotlib the PNG is skipped with a note in the report.
"""

import argparse
import json
import sys

FRAMEWORKS = {"remat": "remat", "hf_trainer": "HF Trainer", "torch_compile": "torch.compile",
              "torch_eager": "PyTorch eager"}


def model_key(r):
    kv = r.get("kv_heads") or r["heads"]
    return (f"{r['arch']} {r['layers']}x{r['hidden']} h{r['heads']}/kv{kv} ffn{r['ffn']} "
            f"vocab{r['vocab']}, {r['batch']}x{r['seq']}, {'bf16' if r.get('bf16') else 'fp32'}")


def fmt(value, spec):
    return "-" if value is None else format(value, spec)


def find(rows, framework, policy):
    for r in rows:
        if r["framework"] == framework and r["policy"] == policy:
            return r
    return None


def activation(r):
    return r.get("peak_minus_model_state_mib")


def checks(rows):
    """(check, value, target, met) for what the rows allow."""
    out = []
    for policy in ("none", "full"):
        mine = find(rows, "remat", policy)
        for framework, target in (("hf_trainer", 1.5), ("torch_compile", None)):
            other = find(rows, framework, policy)
            if mine and other and other["tokens_per_s"]:
                ratio = mine["tokens_per_s"] / other["tokens_per_s"]
                out.append((f"remat / {FRAMEWORKS[framework]} tokens/s, checkpointing {policy}",
                            f"{ratio:.2f}x", f">= {target}x" if target else "reported",
                            None if target is None else ratio >= target))
    base = find(rows, "remat", "none")
    if base:
        for r in rows:
            if r["framework"] != "remat" or r["policy"] == "none":
                continue
            overhead = r["median_step_ms"] / base["median_step_ms"] - 1
            cut = None
            if activation(r) is not None and activation(base):
                cut = 1 - activation(r) / activation(base)
            if r["policy"] == "full":
                out.append(("remat full checkpointing step-time overhead", f"{overhead:+.1%}",
                            "<= 15%", overhead <= 0.15))
            else:
                met = overhead <= 0.05 and cut is not None and cut >= 0.40
                out.append((f"remat {r['policy']}: overhead, activation memory cut",
                            f"{overhead:+.1%}, {fmt(cut, '.0%')}", "<= 5% and >= 40%", met))
        losses = {r["policy"]: r["final_loss"] for r in rows if r["framework"] == "remat"}
        if len(losses) > 1 and None not in losses.values():
            spread = max(losses.values()) - min(losses.values())
            out.append(("remat final loss, largest difference between policies", f"{spread:.2e}",
                        "same training", spread <= 1e-2 * max(abs(v) for v in losses.values())))
    full = find(rows, "remat", "full")
    if full and full["arch"] == "gpt2" and full.get("peak_allocated_mib") is not None:
        out.append(("remat GPT-2 full checkpointing peak allocated",
                    f"{full['peak_allocated_mib']:,.0f} MiB", "<= 3,817 MiB (3.8 GB)",
                    full["peak_allocated_mib"] <= 3817))
    return out


def where_the_time_goes(rows):
    """Markdown lines: per profiled policy, the time per step by category."""
    profiled = [r for r in rows if r.get("profile")]
    if not profiled:
        return []
    names = []
    for r in profiled:
        for c in r["profile"]["categories"]:
            if c["category"] not in names:
                names.append(c["category"])

    def entry(r, name):
        for c in r["profile"]["categories"]:
            if c["category"] == name:
                return c
        return None

    used = [n for n in names
            if any((entry(r, n) or {}).get("ms_per_step", 0) > 0 for r in profiled)]
    header = ["framework", "policy", "steps", "wall ms", "busy ms", "idle", "launches"] + used
    lines = ["", "### Where the time goes", "",
             "Per profiled step (remat-bench --profile): device kernel time by category on CUDA "
             "(top-level aten:: operators on CPU), ms and share of the summed kernel time; busy "
             "is the union of the kernel intervals, idle is 1 - busy / wall. The profiler's own "
             "overhead lengthens the wall time against the step ms above.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in profiled:
        p = r["profile"]
        source = "" if p.get("source") == "device" else f" ({p.get('source')})"
        cells = [FRAMEWORKS.get(r["framework"], r["framework"]), r["policy"] + source,
                 str(p["steps"]), f"{p['wall_ms_per_step']:.2f}", f"{p['busy_ms_per_step']:.2f}",
                 f"{p['idle_percent']:.1f}%", f"{p['launches_per_step']:.0f}"]
        for n in used:
            c = entry(r, n)
            cells.append("-" if not c else f"{c['ms_per_step']:.2f} ({c['percent']:.0f}%)")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown(groups, png_note):
    lines = ["# remat vs the anchors", ""]
    devices = sorted({r["device"] for rows in groups.values() for r in rows})
    lines.append(f"Device: {', '.join(devices)}. Step ms is the median over the timed steps; "
                 "peak is the caching allocator's peak allocated over them; model state is "
                 "16 bytes per parameter (fp32 weights, gradients, AdamW moments).")
    lines.append("")
    for key, rows in groups.items():
        lines += [f"## {key}", "",
                  "| framework | policy | step ms | tokens/s | MFU | peak MiB | peak - model state MiB "
                  "| activation floor MiB | final loss |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            mfu = None if r.get("mfu") is None else 100 * r["mfu"]
            lines.append(
                f"| {FRAMEWORKS.get(r['framework'], r['framework'])} | {r['policy']} "
                f"| {fmt(r['median_step_ms'], '.1f')} | {fmt(r['tokens_per_s'], ',.0f')} "
                f"| {fmt(mfu, '.1f')}{'%' if mfu is not None else ''} "
                f"| {fmt(r.get('peak_allocated_mib'), ',.0f')} "
                f"| {fmt(r.get('peak_minus_model_state_mib'), ',.0f')} "
                f"| {fmt(r.get('activation_floor_mib'), ',.0f')} | {fmt(r.get('final_loss'), '.4f')} |")
        found = checks(rows)
        if found:
            lines += ["", "| check | measured | target | met |", "|---|---|---|---|"]
            for name, value, target, met in found:
                mark = "-" if met is None else ("yes" if met else "**no**")
                lines.append(f"| {name} | {value} | {target} | {mark} |")
        lines += where_the_time_goes(rows)
        lines.append("")
    if png_note:
        lines += [png_note, ""]
    return "\n".join(lines)


def plot(groups, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "No plot: matplotlib is not installed where compare.py ran."
    keys = [k for k, rows in groups.items() if any(r.get("peak_allocated_mib") for r in rows)]
    if not keys:
        return "No plot: no row has a peak (CPU runs)."
    fig, axes = plt.subplots(1, len(keys), figsize=(7 * len(keys), 5.5), squeeze=False)
    colors = {"remat": "tab:blue", "hf_trainer": "tab:orange", "torch_compile": "tab:green",
              "torch_eager": "tab:gray"}
    for ax, key in zip(axes[0], keys):
        for framework in colors:
            rows = [r for r in groups[key]
                    if r["framework"] == framework and r.get("peak_allocated_mib")]
            if not rows:
                continue
            ax.scatter([r["median_step_ms"] for r in rows], [r["peak_allocated_mib"] for r in rows],
                       color=colors[framework], label=FRAMEWORKS[framework], s=50)
            for r in rows:
                ax.annotate(r["policy"], (r["median_step_ms"], r["peak_allocated_mib"]),
                            textcoords="offset points", xytext=(5, 4), fontsize=8)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("median step ms")
        ax.set_ylabel("peak allocated MiB")
        ax.set_xlim(left=0)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return None


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("inputs", nargs="+", help="JSON arrays of results")
    p.add_argument("--markdown", required=True)
    p.add_argument("--png")
    args = p.parse_args()
    rows = []
    for path in args.inputs:
        try:
            with open(path) as f:
                rows += json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            print(f"compare.py: skipping {path}: {e}", file=sys.stderr)
    if not rows:
        sys.exit("compare.py: no results")
    groups = {}
    for r in rows:
        groups.setdefault(model_key(r), []).append(r)
    note = plot(groups, args.png) if args.png else None
    with open(args.markdown, "w") as f:
        f.write(markdown(groups, note))
    print(open(args.markdown).read())


if __name__ == "__main__":
    main()
