"""Reference data for tests/io/tokenizer_test.cpp.

Trains small byte-level BPE tokenizers with the Hugging Face `tokenizers`
library, in the styles of GPT-2, Llama 3 and Qwen2, saves each with
transformers' `save_pretrained` (so tokenizer_config.json is real), and
records what transformers and `tokenizers` make of a test corpus: encoded
ids with and without special tokens, decoded strings with and without
skip_special_tokens, the decoding of every single id and of random id
sequences, vocabulary sizes and special-token ids.

Usage: python tokenizer_oracle.py OUT_DIR
Writes OUT_DIR/<style>/tokenizer.json (+ tokenizer_config.json) and
OUT_DIR/expected.json.
"""

import json
import os
import random
import shutil
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from tokenizers import (  # noqa: E402
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import AutoTokenizer, PreTrainedTokenizerFast  # noqa: E402

GPT2_SPECIAL = "<|endoftext|>"
LLAMA3_SPECIAL = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|reserved_special_token_0|>",
]
QWEN2_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

WORDS = {
    "latin": "the quick brown fox jumps over lazy dog while river stones sing about "
    "learning tokens models gradients memory checkpoint training".split(),
    "accents": "café naïve résumé façade jalapeño über straße smørrebrød crème brûlée".split(),
    "greek": "καλημέρα κόσμε λόγος φύση αλήθεια".split(),
    "cyrillic": "привет мир язык модель обучение".split(),
    "arabic": "مرحبا بالعالم لغة نموذج".split(),
    "hebrew": "שלום עולם שפה".split(),
    "devanagari": "नमस्ते दुनिया भाषा".split(),
    "thai": "สวัสดีชาวโลก ภาษา".split(),
    "korean": "안녕하세요 세계 언어 모델".split(),
    "cjk": "日本語 中文 漢字 東京 北京 学习 模型 トークン ひらがな カタカナ".split(),
    "emoji": ["😀", "🍕", "❤️", "👍🏽", "👨\u200d👩\u200d👧\u200d👦", "🏳️\u200d🌈", "🇺🇸", "🇯🇵", "✨", "🤖"],
    "contractions": "it's don't we're you've I'm they'll she'd IT'S DON'T WE'RE YOU'VE I'M "
    "THEY'LL SHE'D It'S dOn'T".split(),
    "numbers": ["0", "7", "42", "123", "2024", "31415", "1000000", "3.14", "1,234", "007"],
    "punct": [",", ".", "!", "?", ";", ":", "...", "--", "(", ")", '"', "'", "&", "#", "@", "%"],
}
SPACES = [" ", " ", " ", " ", "  ", "\t", "\n", "\n\n", " \n", "\r\n", "   "]

# Code point ranges for random strings: ASCII and controls, Latin, combining
# marks, Greek, Cyrillic, Hebrew/Arabic, Devanagari, Thai, Hangul jamo and
# syllables (NFC composes them), kana, CJK, emoji, regional indicators,
# variation selectors, zero-width characters, math letters, fullwidth forms.
CODE_POINT_RANGES = [
    (0x20, 0x7E), (0x00, 0x1F), (0xA0, 0x24F), (0x300, 0x36F), (0x370, 0x3FF), (0x400, 0x4FF),
    (0x590, 0x6FF), (0x900, 0x97F), (0xE00, 0xE7F), (0x1100, 0x11FF), (0xAC00, 0xD7A3),
    (0x3040, 0x30FF), (0x4E00, 0x9FFF), (0x1F300, 0x1FAFF), (0x1F1E6, 0x1F1FF), (0xFE00, 0xFE0F),
    (0x200B, 0x200F), (0x2028, 0x2029), (0x1D400, 0x1D7FF), (0xFF00, 0xFFEF),
]
# Unicode whitespace beyond ASCII, and characters that only look like it.
ODD_SPACES = [0x85, 0xA0, 0x1680, 0x2000, 0x2007, 0x202F, 0x205F, 0x3000, 0x180E, 0xFEFF, 0x0B, 0x0C, 0x1C]


def random_text(rng, n_words, specials=()):
    groups = list(WORDS)
    out = []
    for _ in range(n_words):
        roll = rng.random()
        if specials and roll < 0.03:
            out.append(rng.choice(specials))
        else:
            out.append(rng.choice(WORDS[rng.choice(groups)]))
        out.append(rng.choice(SPACES) if rng.random() < 0.85 else "")
    return "".join(out)


def random_code_points(rng, specials):
    out = []
    for _ in range(rng.randint(1, 40)):
        roll = rng.random()
        if roll < 0.15:
            out.append(chr(rng.choice(ODD_SPACES)))
        elif roll < 0.25:
            out.append(rng.choice(specials + ["'s", "'LL", "\r\n", "123456", "  "]))
        else:
            low, high = rng.choice(CODE_POINT_RANGES)
            out.append(chr(rng.randint(low, high)))
    return "".join(out)


def training_corpus():
    rng = random.Random(1234)
    return [random_text(rng, rng.randint(5, 40)) for _ in range(3000)]


def test_corpus():
    fixed = [
        "",
        "Hello, world! This is a simple sentence.",
        "The quick brown fox jumps over the lazy dog. Memory is traded for compute: "
        "activations are recomputed during the backward pass instead of being stored.",
        "Ελληνικά κείμενα, русский текст, עברית, العربية, हिन्दी, ไทย, 한국어 and English.",
        "日本語のテキストと中文文本，还有標點符號。東京は晴れ。",
        "e\u0301 a\u0300 n\u0303 o\u0308 versus é à ñ ö; A\u030a\u0323 and \u1e69 and Å",
        "cafe\u0301! and café! and CAFE\u0301!",
        "I ❤️ 🍕! 👨\u200d👩\u200d👧\u200d👦 family, 🏳️\u200d🌈 flag, 🇺🇸🇯🇵🇩🇪 flags, 👍🏽👍🏿 tones 🤖✨",
        "  two leading spaces",
        "trailing spaces   ",
        "tabs\tand\t\tmore\ttabs\t",
        "new\nlines\n\n\nmany\n",
        "mixed \t \n \r\n whitespace   \n  end",
        "   ",
        "\n",
        "\t",
        " ",
        "1234567890 3.14159 1,000,000 0000000000000000001 12 123 1234 12345 99999999999999999999",
        "It's, don't, we're, you've, I'm, they'll, she'd; IT'S DON'T WE'RE YOU'VE I'M THEY'LL SHE'D;"
        " It'S dOn'T 's 't ''s",
        "<|endoftext|>Hello<|endoftext|> world <|endoftext|>",
        "<|begin_of_text|>Hi<|eot_id|>\n<|start_header_id|>user<|end_header_id|>\n\nHow?<|eot_id|>",
        "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nhi<|im_end|>",
        "<|endoftext|<|eot_id|><|eot_id|><<|eot_id|>> <|eot_id <|im_end|>>",
        "a <|mask|> b <|mask|>c   <|mask|>   d<|mask|>",
        "cat concat cat. cats _cat cat_ (cat) <tool>call</tool> <tool><tool>",
        "\x00\x01\x7f bell\x07 escape\x1b[0m",
        "ﬁ ligature, Ω ohm, Å angstrom, ① circled, ｆｕｌｌｗｉｄｔｈ",
        "\u00a0non-breaking\u2003em-space\u3000ideographic\u200bzero-width",
    ]
    rng = random.Random(99)
    specials = [GPT2_SPECIAL, "<|eot_id|>", "<|im_start|>", "<|mask|>", "<tool>", "café!"]
    randoms = [random_text(rng, rng.randint(1, 30), specials) for _ in range(40)]
    code_points = [random_code_points(rng, specials) for _ in range(60)]
    long_text = random_text(random.Random(7), 6000, specials)
    return fixed + randoms + code_points + [long_text]


def train(tokenizer, special_tokens, vocab_size=900):
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(training_corpus(), trainer)
    return tokenizer


def gpt2_style():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    train(tok, [GPT2_SPECIAL])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=GPT2_SPECIAL, eos_token=GPT2_SPECIAL, unk_token=GPT2_SPECIAL
    )
    return fast


def llama3_style():
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    train(tok, LLAMA3_SPECIAL)
    bos = LLAMA3_SPECIAL[0]
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{bos} $A",
                pair=f"{bos} $A {bos} $B:1",
                special_tokens=[(bos, tok.token_to_id(bos))],
            ),
        ]
    )
    tok.add_special_tokens([AddedToken("<|mask|>", lstrip=True, rstrip=True, special=True)])
    tok.add_tokens(
        [
            AddedToken("<tool>", normalized=False),
            AddedToken("cat", single_word=True),
        ]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token="<|eot_id|>")


def qwen2_style():
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    train(tok, QWEN2_SPECIAL)
    # Matched after NFC normalization: "cafe\u0301!" in the text finds it too.
    tok.add_tokens([AddedToken("café!", normalized=True)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", extra_special_tokens=["<|im_start|>"]
    )


def write_legacy_merges(directory):
    """Rewrites merges from the [a, b] pair form to the "a b" string form."""
    path = os.path.join(directory, "tokenizer.json")
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    data["model"]["merges"] = [" ".join(m) for m in data["model"]["merges"]]
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False)


def qwen2_config_edits(directory):
    """Leaves the BOS/EOS policy to tokenizer_config.json, as many Hub models
    do: the tokenizer.json post-processor adds nothing, the config asks for
    an EOS, and names a pad token the vocabulary does not have."""
    path = os.path.join(directory, "tokenizer.json")
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    data["post_processor"] = {
        "type": "ByteLevel",
        "add_prefix_space": False,
        "trim_offsets": False,
        "use_regex": True,
    }
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False)
    path = os.path.join(directory, "tokenizer_config.json")
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    config["add_eos_token"] = True
    config["pad_token"] = "<|pad|>"
    with open(path, "w", encoding="utf-8") as f:
        json.dump(config, f, ensure_ascii=False, indent=2)


def split_special_variant(out_dir):
    """The Llama 3 style directory with split_special_tokens in its config:
    special tokens written in the text are then tokenized as text."""
    directory = os.path.join(out_dir, "llama3_split_special")
    shutil.copytree(os.path.join(out_dir, "llama3"), directory, dirs_exist_ok=True)
    path = os.path.join(directory, "tokenizer_config.json")
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    config["split_special_tokens"] = True
    with open(path, "w", encoding="utf-8") as f:
        json.dump(config, f, ensure_ascii=False, indent=2)
    return directory


def split_variants(base_json):
    """The GPT-2 vocabulary under other pre-tokenizers, to cover every Split
    behaviour, inversion, string patterns and ByteLevel's add_prefix_space."""
    variants = {
        "split_removed": pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(r"\s+"), behavior="removed"),
                pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=False),
            ]
        ),
        "split_merged_with_previous": pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(".", behavior="merged_with_previous"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            ]
        ),
        "split_merged_with_next_inverted": pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(r"\p{L}+"), behavior="merged_with_next", invert=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        ),
        "split_contiguous": pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(r"[aeiou]|\d"), behavior="contiguous"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        ),
        "bytelevel_prefix_space": pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True),
    }
    for name, pre_tokenizer in variants.items():
        tok = Tokenizer.from_str(base_json)
        tok.pre_tokenizer = pre_tokenizer
        yield name, tok


def encode_cases(corpus, hf, backend):
    cases = []
    for text in corpus:
        case = {"text": text}
        if hf is not None:
            ids = hf.encode(text, add_special_tokens=True)
            case["ids"] = ids
            case["ids_no_special"] = hf.encode(text, add_special_tokens=False)
            case["decoded"] = hf.decode(ids, skip_special_tokens=False)
            case["decoded_skip_special"] = hf.decode(ids, skip_special_tokens=True)
        case["backend_ids"] = backend.encode(text, add_special_tokens=True).ids
        case["backend_ids_no_special"] = backend.encode(text, add_special_tokens=False).ids
        cases.append(case)
    return cases


def decode_cases(hf, size):
    rng = random.Random(5)
    sequences = [[i] for i in range(size)]
    sequences += [[rng.randrange(size) for _ in range(rng.randint(1, 12))] for _ in range(300)]
    return [
        {
            "ids": ids,
            "text": hf.decode(ids, skip_special_tokens=False),
            "text_skip_special": hf.decode(ids, skip_special_tokens=True),
        }
        for ids in sequences
    ]


def describe(hf, backend, corpus):
    return {
        "vocab_size": len(hf),
        "backend_vocab_size": backend.get_vocab_size(with_added_tokens=True),
        "bos_token_id": hf.bos_token_id,
        "eos_token_id": hf.eos_token_id,
        "pad_token_id": hf.pad_token_id,
        "token_to_id": {t: i for t, i in sorted(hf.get_vocab().items(), key=lambda x: x[1])[:50]},
        "cases": encode_cases(corpus, hf, backend),
        "decode_cases": decode_cases(hf, len(hf)),
    }


def main(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    corpus = test_corpus()
    expected = {}
    for name, build in [("gpt2", gpt2_style), ("llama3", llama3_style), ("qwen2", qwen2_style)]:
        directory = os.path.join(out_dir, name)
        build().save_pretrained(directory)
        if name == "gpt2":
            write_legacy_merges(directory)
        if name == "qwen2":
            qwen2_config_edits(directory)
        hf = AutoTokenizer.from_pretrained(directory)
        backend = Tokenizer.from_file(os.path.join(directory, "tokenizer.json"))
        expected[name] = describe(hf, backend, corpus)
        if name == "gpt2":
            base_json = backend.to_str()
    directory = split_special_variant(out_dir)
    hf = AutoTokenizer.from_pretrained(directory)
    backend = Tokenizer.from_file(os.path.join(directory, "tokenizer.json"))
    expected["llama3_split_special"] = {"cases": encode_cases(corpus[:-1], hf, backend)}
    for name, tok in split_variants(base_json):
        directory = os.path.join(out_dir, name)
        os.makedirs(directory, exist_ok=True)
        tok.save(os.path.join(directory, "tokenizer.json"))
        expected[name] = {"cases": encode_cases(corpus[:-1], None, tok)}
    with open(os.path.join(out_dir, "expected.json"), "w", encoding="utf-8") as f:
        json.dump(expected, f, ensure_ascii=False)


if __name__ == "__main__":
    main(sys.argv[1])
