"""remat-finetune --report_to tensorboard jsonl writes TensorBoard event files
into the output directory, with the training loss in them.

usage: finetune_tensorboard_test.py REMAT_FINETUNE WORK_DIR
"""

import json
import os
import shutil
import struct
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
    # One run directory; as with transformers' callback, a writer closed at
    # the end of training and reopened by the evaluation after it makes a
    # second file there.
    run_dirs = {os.path.dirname(e) for e in events}
    assert len(run_dirs) == 1 and 1 <= len(events) <= 2, events
    # Read back with TensorBoard's own reader: the train/loss scalars are the
    # losses of log.jsonl at the same steps.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(run_dirs.pop())
    acc.Reload()
    scalars = {e.step: e.value for e in acc.Scalars("train/loss")}
    logged = {}
    with open(os.path.join(out, "log.jsonl")) as f:
        for line in f:
            record = json.loads(line)
            if "loss" in record and "train_loss" not in record:
                logged[record["step"]] = record["loss"]
    assert sorted(scalars) == sorted(logged) == [5, 10, 15, 20], (scalars, logged)
    for step, loss in logged.items():
        # TensorBoard stores a scalar as float32: the logged loss rounded once.
        assert scalars[step] == struct.unpack("f", struct.pack("f", loss))[0], (step, scalars[step], loss)
    # The evaluations before and after training (steps 0 and 20).
    eval_steps = sorted(e.step for e in acc.Scalars("eval/loss"))
    assert eval_steps == [0, 20], eval_steps
    print("TensorBoard files:", events, "train/loss:", scalars)


if __name__ == "__main__":
    main()
