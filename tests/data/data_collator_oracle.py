"""Reference batches from transformers' data collators.

Writes <out>/batches.json: for each case, the examples, the padding settings,
which collator gave the reference, and its input_ids, attention_mask and
labels (labels absent for DataCollatorWithPadding, which makes none).
  lm          DataCollatorForLanguageModeling(mlm=False): labels = input_ids
              with padding -100 (the examples hold no pad id)
  seq2seq     DataCollatorForSeq2Seq(label_pad_token_id=-100): the examples'
              own labels (a masked prompt), padded with -100
  padding     DataCollatorWithPadding
The tokenizer is a word-level one built in memory; only its pad token and
padding side matter to the collators.
"""

import json
import pathlib
import sys

from tokenizers import Tokenizer, models
from transformers import (DataCollatorForLanguageModeling, DataCollatorForSeq2Seq,
                          DataCollatorWithPadding, PreTrainedTokenizerFast)


def tokenizer(pad_token_id, padding_side):
    vocab = {f"t{i}": i for i in range(300)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="t299"))
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token=f"t{pad_token_id}",
                                   padding_side=padding_side)


def collate(kind, examples, pad_token_id, padding_side, multiple):
    tok = tokenizer(pad_token_id, padding_side)
    if kind == "lm":
        collator = DataCollatorForLanguageModeling(tok, mlm=False, pad_to_multiple_of=multiple)
        features = [{"input_ids": e["input_ids"]} for e in examples]
    elif kind == "seq2seq":
        collator = DataCollatorForSeq2Seq(tok, label_pad_token_id=-100, pad_to_multiple_of=multiple)
        features = [dict(e) for e in examples]
    else:
        collator = DataCollatorWithPadding(tok, pad_to_multiple_of=multiple)
        features = [{"input_ids": e["input_ids"]} for e in examples]
    batch = collator(features)
    return {k: batch[k].tolist() for k in ("input_ids", "attention_mask", "labels") if k in batch}


def plain(*rows):
    return [{"input_ids": r, "labels": r} for r in rows]


def prompted(*pairs):
    return [{"input_ids": p + c, "labels": [-100] * len(p) + c} for p, c in pairs]


def main():
    out = pathlib.Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    ragged = plain([5, 6, 7], [8, 9, 10, 11, 12], [13])
    masked = prompted(([256, 1, 2], [3, 4, 257]), ([256, 5], [6, 257]), ([256, 7, 8, 9, 10], [257]))
    settings = [
        ("lm", ragged, 258, "right", None),
        ("lm", ragged, 258, "left", None),
        ("lm", ragged, 258, "right", 4),
        ("lm", ragged, 0, "left", 8),
        ("lm", plain([1, 2, 3, 4], [5, 6, 7, 8]), 258, "right", None),  # same length: stacked
        ("lm", plain([1, 2, 3, 4], [5, 6, 7, 8]), 258, "right", 4),
        ("lm", plain([1, 2, 3, 4], [5, 6, 7, 8]), 258, "right", 3),
        ("lm", plain([42]), 258, "right", None),
        ("seq2seq", masked, 258, "right", None),
        ("seq2seq", masked, 258, "left", None),
        ("seq2seq", masked, 0, "right", 8),
        ("padding", ragged, 258, "right", 2),
        ("padding", ragged, 258, "left", None),
    ]
    cases = [{"kind": kind, "examples": examples, "pad_token_id": pad, "padding_side": side,
              "pad_to_multiple_of": multiple, "batch": collate(kind, examples, pad, side, multiple)}
             for kind, examples, pad, side, multiple in settings]
    (out / "batches.json").write_text(json.dumps(cases, indent=1))
    print(f"wrote {len(cases)} batches to {out}")


if __name__ == "__main__":
    main()
