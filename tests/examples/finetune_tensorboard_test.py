"""remat-finetune --report_to tensorboard jsonl writes TensorBoard event files
into the output directory, with the training loss in them.

usage: finetune_tensorboard_test.py REMAT_FINETUNE WORK_DIR
"""

import os
import shutil
import sys

from fixtures import run


def main():
    finetune, work = sys.argv[1], sys.argv[2]
    shutil.rmtree(work, ignore_errors=True)
    out = os.path.join(work, "out")
    run([finetune, "--output_dir", out, "--max_steps", "20", "--logging_steps", "5",
         "--report_to", "tensorboard", "jsonl", "--benchmark_steps", "0",
         "--max_eval_generations", "0"])
    events = [os.path.join(d, f) for d, _, files in os.walk(out) for f in files
              if f.startswith("events.out.tfevents")]
    assert events, f"no events.out.tfevents file under {out}"
    data = b"".join(open(e, "rb").read() for e in events)
    assert b"loss" in data, "the event files hold no loss"
    print("TensorBoard files:", events)


if __name__ == "__main__":
    main()
