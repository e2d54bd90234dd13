#!/usr/bin/env python3
"""Plots the training and evaluation loss of a remat run.

Reads the JSON lines the Trainer appends to <output_dir>/log.jsonl with
`report_to jsonl` (training records carry "loss" and "step", evaluations
"eval_loss" and "step") and writes a PNG of both losses against the step.

  python scripts/plot_metrics.py trainer_output/log.jsonl -o loss.png
"""

import argparse
import json
import sys


def read_records(path):
    """The log's records as dicts; exits with a message on an unreadable,
    malformed or empty file."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line for line in f if line.strip()]
    except OSError as e:
        sys.exit(f"plot_metrics: cannot read {path}: {e.strerror}")
    if not lines:
        sys.exit(f"plot_metrics: {path} is empty; train with --report_to jsonl to fill it")
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            sys.exit(f"plot_metrics: {path}:{number} is not JSON: {e.msg}")
    return records


def series(records, key):
    """(steps, values) of the records that have both "step" and `key`."""
    points = [(r["step"], r[key]) for r in records if key in r and "step" in r]
    return [p[0] for p in points], [p[1] for p in points]


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Plot train and eval loss against the step from a remat log.jsonl.")
    parser.add_argument("log", help="the Trainer's JSON-lines log (output_dir/log.jsonl)")
    parser.add_argument("-o", "--output", default="loss.png",
                        help="PNG to write (default: loss.png)")
    parser.add_argument("--title", default=None, help="plot title (default: the log's path)")
    args = parser.parse_args(argv)

    records = read_records(args.log)
    train_steps, train_loss = series(records, "loss")
    eval_steps, eval_loss = series(records, "eval_loss")
    if not train_steps and not eval_steps:
        sys.exit(f"plot_metrics: {args.log} has no record with \"step\" and "
                 "\"loss\" or \"eval_loss\"")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    if train_steps:
        ax.plot(train_steps, train_loss, label="train loss")
    if eval_steps:
        ax.plot(eval_steps, eval_loss, "o-", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(args.title or args.log)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.output, format="png")
    print(f"wrote {args.output}: {len(train_steps)} train and {len(eval_steps)} eval points")


if __name__ == "__main__":
    main()
