"""Reference examples for remat::data::CausalLMDataset.

Writes to <out> a text file and a JSONL file, and examples.json: for several
option sets, the examples the dataset must give with a byte-level tokenizer
(the UTF-8 bytes of the text; BOS 256, EOS 257). JSONL records are decoded
with Python's json module; packing is transformers' group_texts (from
examples/pytorch/language-modeling/run_clm.py, verbatim) applied to the
tokenized documents.
"""

import json
import pathlib
import sys
from itertools import chain

BOS, EOS = 256, 257

TEXT = (
    "\n\n"
    "The first paragraph\n"
    "goes over two lines.\r\n"
    "   \n"
    "Caf\u00e9 au lait, na\u00efve r\u00e9sum\u00e9 \U0001F600.\n"
    "\t\n"
    "\n"
    "A third paragraph, long enough to be cut when max_seq_length is small.\n"
    "Last line without a newline"
)

RECORDS = [
    {"text": "Plain JSONL text with \"quotes\", a tab\t and\na newline."},
    {"text": "Unicode escapes: \u00e9\u4e2d\U0001F680", "meta": 3},
    None,  # a blank line
    {"prompt": "Question: 2+2? ", "completion": "Answer: 4"},
    {"text": ""},  # no tokens: skipped
    {"prompt": "A prompt longer than the short max_seq_length, so nothing of the completion is "
               "left after truncation. ", "completion": "Lost."},
    {"prompt": "", "completion": "An empty prompt is plain text."},
]


def tokenize(text):
    return list(text.encode("utf-8"))


def split_text(text, sample_by):
    if sample_by == "document":
        return [text] if text.strip() else []
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    if sample_by == "line":
        return [line for line in lines if line.strip()]
    paragraphs, current = [], []
    for line in lines + [""]:
        if line.strip():
            current.append(line)
        elif current:
            paragraphs.append("\n".join(current))
            current = []
    return paragraphs


def tokenized(documents, bos, eos):
    for prompt, completion in documents:
        p, c = tokenize(prompt), tokenize(completion)
        if not p and not c:
            continue
        ids = ([bos] if bos is not None else []) + p
        masked = len(ids) if prompt else 0
        ids += c + ([eos] if eos is not None else [])
        yield ids, [-100] * masked + ids[masked:]


def group_texts(examples, block_size):
    # Concatenate all texts.
    concatenated_examples = {k: list(chain(*examples[k])) for k in examples.keys()}
    total_length = len(concatenated_examples[list(examples.keys())[0]])
    # We drop the small remainder, and if the total_length < block_size  we exclude this batch and
    # return an empty dict. We could add padding if the model supported it instead of this drop,
    # you can customize this part to your needs.
    total_length = (total_length // block_size) * block_size
    # Split by chunks of max_len.
    result = {
        k: [t[i: i + block_size] for i in range(0, total_length, block_size)]
        for k, t in concatenated_examples.items()
    }
    result["labels"] = result["input_ids"].copy()
    return result


def examples(documents, bos=None, eos=None, max_seq_length=1024, packing=False):
    pairs = list(tokenized(documents, bos, eos))
    if not packing:
        return [{"input_ids": ids[:max_seq_length], "labels": labels[:max_seq_length]}
                for ids, labels in pairs]
    grouped = group_texts({"input_ids": [ids for ids, _ in pairs],
                           "masked_labels": [labels for _, labels in pairs]}, max_seq_length)
    return [{"input_ids": ids, "labels": labels}
            for ids, labels in zip(grouped["input_ids"], grouped["masked_labels"])]


def main():
    out = pathlib.Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    (out / "docs.txt").write_bytes(TEXT.encode("utf-8"))
    (out / "docs.jsonl").write_text(
        "\n".join("" if r is None else json.dumps(r) for r in RECORDS) + "\n", encoding="utf-8")
    records = [r for r in RECORDS if r is not None]
    jsonl = [(r.get("prompt", ""), r.get("text", r.get("completion"))) for r in records]

    def txt(sample_by):
        return [("", d) for d in split_text(TEXT, sample_by)]

    cases = [
        {"files": ["docs.txt"], "options": {"sample_by": "paragraph", "max_seq_length": 1024},
         "examples": examples(txt("paragraph"))},
        {"files": ["docs.txt"], "options": {"sample_by": "line", "max_seq_length": 16, "bos": BOS,
                                            "eos": EOS},
         "examples": examples(txt("line"), BOS, EOS, 16)},
        {"files": ["docs.txt"], "options": {"sample_by": "document", "max_seq_length": 1024,
                                            "eos": EOS},
         "examples": examples(txt("document"), None, EOS)},
        {"files": ["docs.jsonl"], "options": {"max_seq_length": 40, "bos": BOS, "eos": EOS},
         "examples": examples(jsonl, BOS, EOS, 40)},
        {"files": ["docs.txt", "docs.jsonl"],
         "options": {"sample_by": "paragraph", "max_seq_length": 16, "bos": BOS, "eos": EOS,
                     "packing": True},
         "examples": examples(txt("paragraph") + jsonl, BOS, EOS, 16, packing=True)},
        {"files": ["docs.jsonl", "docs.txt"],
         "options": {"sample_by": "line", "max_seq_length": 50, "eos": EOS, "packing": True},
         "examples": examples(jsonl + txt("line"), None, EOS, 50, packing=True)},
    ]
    (out / "examples.json").write_text(json.dumps(cases))
    print(f"wrote {len(cases)} cases to {out}: " + ", ".join(str(len(c["examples"])) for c in cases))


if __name__ == "__main__":
    main()
