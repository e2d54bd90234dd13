"""Checks the trainer_state.json remat's Trainer wrote into a checkpoint
(tests/trainer_callback_test.cpp copies it to CPP_DIR) with transformers:
TrainerState.load_from_json reads it with the expected values, saving the
loaded state again gives the same text byte for byte (sorted keys, indent 2,
numbers as Python writes them), and its keys are those of a state
transformers writes itself, stateful_callbacks' TrainerControl included.

Usage: trainer_state_check.py CPP_DIR
"""

import dataclasses
import json
import os
import sys
import tempfile

from transformers import TrainerControl, TrainerState


def fail(message):
    raise SystemExit("trainer_state.json: " + message)


def main(cpp_dir):
    path = os.path.join(cpp_dir, "trainer_state.json")
    with open(os.path.join(cpp_dir, "expected.json"), encoding="utf-8") as f:
        expected = json.load(f)
    state = TrainerState.load_from_json(path)
    for key in ("global_step", "max_steps", "epoch", "num_input_tokens_seen", "total_flos"):
        if getattr(state, key) != expected[key]:
            fail(f"{key} is {getattr(state, key)!r}, expected {expected[key]!r}")
    if len(state.log_history) != expected["log_history_length"]:
        fail(f"{len(state.log_history)} log records, expected {expected['log_history_length']}")
    if not any("loss" in r for r in state.log_history) or not any(
            "eval_loss" in r for r in state.log_history):
        fail("log_history lacks training or evaluation records")

    with tempfile.TemporaryDirectory() as tmp:
        again = os.path.join(tmp, "trainer_state.json")
        state.save_to_json(again)
        with open(path, encoding="utf-8") as a, open(again, encoding="utf-8") as b:
            written, rewritten = a.read(), b.read()
        if written != rewritten:
            for i, (x, y) in enumerate(zip(written.splitlines(), rewritten.splitlines())):
                if x != y:
                    fail(f"transformers writes line {i + 1} as {y!r}, remat wrote {x!r}")
            fail("transformers writes a different text (length differs)")

        reference = TrainerState(stateful_callbacks=[TrainerControl()])
        reference_path = os.path.join(tmp, "reference.json")
        reference.save_to_json(reference_path)
        with open(reference_path, encoding="utf-8") as f:
            reference_json = json.load(f)
    with open(path, encoding="utf-8") as f:
        remat_json = json.load(f)
    if set(remat_json) != set(reference_json):
        fail(f"keys differ: remat only {sorted(set(remat_json) - set(reference_json))}, "
             f"transformers only {sorted(set(reference_json) - set(remat_json))}")
    if set(remat_json) != {f.name for f in dataclasses.fields(TrainerState)}:
        fail("keys are not TrainerState's fields")
    control = remat_json["stateful_callbacks"].get("TrainerControl")
    reference_control = reference_json["stateful_callbacks"]["TrainerControl"]
    if control is None or set(control) != set(reference_control) or set(
            control["args"]) != set(reference_control["args"]):
        fail(f"stateful_callbacks TrainerControl is {control!r}, transformers writes "
             f"{reference_control!r}")
    print("trainer_state.json: transformers reads and rewrites it identically")


if __name__ == "__main__":
    main(sys.argv[1])
