"""Reads the event files tests/tensorboard_test.cpp wrote with the tensorboard
package's EventAccumulator and compares them with the expected.json the test
saved next to them: every scalar (tag, step, float32 value) and every text
entry (tag, step, string, plugin "text").

Usage: tensorboard_check.py CPP_DIR
  CPP_DIR  what the C++ test wrote: one directory per case (scalars, many,
           multi, callback), each with event files and expected.json
"""

import json
import os
import sys

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

CASES = ["scalars", "many", "multi", "callback"]


def check_case(directory):
    with open(os.path.join(directory, "expected.json")) as f:
        expected = json.load(f)
    acc = EventAccumulator(directory, size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    want_scalars = expected.get("scalars", {})
    want_texts = expected.get("texts", {})
    assert sorted(tags["scalars"]) == sorted(want_scalars), (tags["scalars"], list(want_scalars))
    assert sorted(tags["tensors"]) == sorted(want_texts), (tags["tensors"], list(want_texts))
    for tag, points in want_scalars.items():
        events = acc.Scalars(tag)
        got = [(e.step, e.value) for e in events]
        assert len(got) == len(points), f"{tag}: {len(got)} events, expected {len(points)}"
        for (step, value), (want_step, want_value) in zip(got, points):
            assert step == want_step, f"{tag}: step {step}, expected {want_step}"
            assert value == float(np.float32(want_value)), f"{tag}@{step}: {value} != {want_value}"
        assert all(e.wall_time > 1.5e9 for e in events), f"{tag}: implausible wall_time"
    for tag, points in want_texts.items():
        assert acc.SummaryMetadata(tag).plugin_data.plugin_name == "text", tag
        events = acc.Tensors(tag)
        assert len(events) == len(points), f"{tag}: {len(events)} events, expected {len(points)}"
        for event, (want_step, want_text) in zip(events, points):
            assert event.step == want_step, f"{tag}: step {event.step}, expected {want_step}"
            proto = event.tensor_proto
            assert proto.dtype == 7 and [d.size for d in proto.tensor_shape.dim] == [1], proto
            assert proto.string_val[0].decode("utf-8") == want_text, (tag, proto.string_val)
    count = sum(len(p) for p in want_scalars.values()) + sum(len(p) for p in want_texts.values())
    files = [n for n in os.listdir(directory) if "tfevents" in n]
    print(f"{os.path.basename(directory)}: {count} records in {len(files)} file(s) ok")


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    for case in CASES:
        check_case(os.path.join(sys.argv[1], case))


if __name__ == "__main__":
    main()
