"""Reference defaults of transformers.TrainingArguments.

Writes <out_dir>/defaults.json: for every dataclass field of
transformers.TrainingArguments, its declared default ("declared", before
__post_init__), its value in an instance built with no arguments ("resolved",
after __post_init__ normalised it: output_dir None -> "trainer_output",
report_to "none" -> [], ...), and the type annotation as the set of base
types it admits ("types", e.g. ["None", "int"] for `int | None`).

Building an instance sets up the device through accelerate, which the
reference environment does not install; the device plays no part in the
defaults, so the instance is built with a CPU device in its place.
"""

import dataclasses
import enum
import json
import os
import sys
import types
import typing

import torch
import transformers


def jsonable(value):
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def base_types(annotation):
    """The base types a field annotation admits, as names."""
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        return sorted({name for arg in typing.get_args(annotation) for name in base_types(arg)})
    if origin is typing.Literal:
        return sorted({type(arg).__name__ if arg is not None else "None" for arg in typing.get_args(annotation)})
    if origin is list:
        (item,) = typing.get_args(annotation) or (typing.Any,)
        return ["list[" + "|".join(base_types(item)) + "]"]
    if origin is dict or annotation is dict:
        return ["dict"]
    if annotation is type(None):
        return ["None"]
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return ["str"]
    if annotation is typing.Any:
        return ["Any"]
    return [getattr(annotation, "__name__", str(annotation))]


class CpuTrainingArguments(transformers.TrainingArguments):
    @property
    def _setup_devices(self):
        self._n_gpu = 0
        return torch.device("cpu")


def main(out_dir):
    hints = typing.get_type_hints(transformers.TrainingArguments)
    instance = CpuTrainingArguments()
    fields = {}
    for field in dataclasses.fields(transformers.TrainingArguments):
        if not field.init:
            continue
        if field.default is not dataclasses.MISSING:
            declared = field.default
        elif field.default_factory is not dataclasses.MISSING:
            declared = field.default_factory()
        else:
            declared = None
        fields[field.name] = {
            "declared": jsonable(declared),
            "resolved": jsonable(getattr(instance, field.name)),
            "types": base_types(hints[field.name]),
        }
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "defaults.json"), "w", encoding="utf-8") as f:
        json.dump({"transformers": transformers.__version__, "fields": fields}, f, indent=1, sort_keys=True)


if __name__ == "__main__":
    main(sys.argv[1])
