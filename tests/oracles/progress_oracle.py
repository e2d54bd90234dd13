"""Reference progress lines from tqdm (the bar Hugging Face's Trainer draws).

Writes <out_dir>/progress.json: a list of cases, each {n, total, elapsed,
postfix, line} where line is tqdm.format_meter's output for tqdm's default
layout with a 20-cell bar (or, when total is 0, tqdm's layout for an unknown
total).
"""

import json
import os
import sys

from tqdm import tqdm

BAR_FORMAT = "{l_bar}{bar:20}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"

CASES = [
    (0, 10, 0.0, ""),
    (0, 10, 5.0, ""),
    (1, 10, 0.5, ""),
    (4, 10, 2.0, "loss=2.31"),
    (5, 10, 12.5, "loss=0.5"),
    (7, 9, 3.3, ""),
    (10, 10, 9.99, "loss=1.23e-05"),
    (1, 3, 1.0, ""),
    (1, 1000, 61.0, ""),
    (123, 1000, 7.0, ""),
    (999, 1000, 3600.0, ""),
    (50, 100, 5000.0, ""),
    (3, 7, 0.004, ""),
    (17, 0, 4.0, ""),
    (17, 0, 4.0, "loss=3"),
]


def main():
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    cases = []
    for n, total, elapsed, postfix in CASES:
        if total > 0:
            line = tqdm.format_meter(n, total, elapsed, bar_format=BAR_FORMAT, postfix=postfix)
        else:
            line = tqdm.format_meter(n, None, elapsed, postfix=postfix)
        cases.append({"n": n, "total": total, "elapsed": elapsed, "postfix": postfix, "line": line})
    with open(os.path.join(out_dir, "progress.json"), "w", encoding="utf-8") as f:
        json.dump(cases, f, ensure_ascii=False, indent=1)


if __name__ == "__main__":
    main()
