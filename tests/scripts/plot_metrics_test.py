"""Runs scripts/plot_metrics.py as a user would: on a generated log.jsonl it
writes a PNG (checked by its signature, header and decoded size with
matplotlib), --help works, and a missing or empty log fails with a message.

Usage: plot_metrics_test.py SCRIPT WORK_DIR
"""

import json
import math
import os
import subprocess
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.image  # noqa: E402


def run(script, *args):
    return subprocess.run([sys.executable, script, *args], capture_output=True, text=True)


def main():
    script, work = sys.argv[1], sys.argv[2]
    os.makedirs(work, exist_ok=True)
    log = os.path.join(work, "log.jsonl")
    with open(log, "w") as f:
        for step in range(1, 101):
            f.write(json.dumps({"loss": 4 * math.exp(-step / 30) + 0.5, "grad_norm": 1.0,
                                "learning_rate": 1e-4, "epoch": step / 100, "step": step}) + "\n")
            if step % 20 == 0:
                f.write(json.dumps({"eval_loss": 4 * math.exp(-step / 35) + 0.6,
                                    "perplexity": 3.0, "step": step}) + "\n")
        f.write(json.dumps({"train_runtime": 12.5, "step": 100}) + "\n")
    png = os.path.join(work, "loss.png")
    if os.path.exists(png):
        os.remove(png)

    result = run(script, log, "-o", png)
    assert result.returncode == 0, result.stderr
    assert "100 train and 5 eval points" in result.stdout, result.stdout
    with open(png, "rb") as f:
        data = f.read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", data[:8]
    assert data[12:16] == b"IHDR", data[12:16]
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (800, 500), (width, height)
    image = matplotlib.image.imread(png)
    assert image.shape[:2] == (500, 800), image.shape
    assert image.std() > 0.01, "the image is blank"

    result = run(script, "--help")
    assert result.returncode == 0 and "log.jsonl" in result.stdout, result

    result = run(script, os.path.join(work, "missing.jsonl"), "-o", png)
    assert result.returncode != 0 and "cannot read" in result.stderr, result

    empty = os.path.join(work, "empty.jsonl")
    open(empty, "w").close()
    result = run(script, empty, "-o", png)
    assert result.returncode != 0 and "is empty" in result.stderr, result

    bad = os.path.join(work, "bad.jsonl")
    with open(bad, "w") as f:
        f.write('{"loss": 1, "step": 1}\nnot json\n')
    result = run(script, bad, "-o", png)
    assert result.returncode != 0 and "bad.jsonl:2 is not JSON" in result.stderr, result
    print("plot_metrics ok")


if __name__ == "__main__":
    main()
