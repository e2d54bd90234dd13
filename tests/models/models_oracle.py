"""Reference data for the model tests, computed by transformers.

For each tiny model configuration: a random model saved with save_pretrained
(norm weights, biases and the pad token's embedding row random too, not
transformers' ones and zeros), and in reference.safetensors the inputs and what transformers computes from
them: logits (with and without left padding), the loss, every parameter's
gradient, and greedy generate() output for a left-padded batch. Every
reference comes from a freshly loaded model, so that stateful parts (dynamic
RoPE) start alike in both implementations.

usage: models_oracle.py OUTDIR
"""

import os
import sys

import torch
from safetensors.torch import save_file
from transformers import (AutoModelForCausalLM, GPT2Config, LlamaConfig,
                          Qwen2Config)
from transformers.generation.logits_process import (LogitsProcessorList,
                                                    TemperatureLogitsWarper,
                                                    TopKLogitsWarper,
                                                    TopPLogitsWarper)

# (temperature, top_k, top_p) combinations for the sampling warpers.
WARPER_CASES = [(0.7, 5, 0.9), (1.0, 0, 0.5), (1.3, 10, 1.0), (1.0, 50, 0.95)]

VOCAB = 96
PAD = 0


def randomize(model):
    """Random values where transformers initializes constants, so that a
    norm weight or bias read wrongly (or a pad row zeroed) shows."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif "norm" in name or ".ln_" in name:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
        embedding = model.get_input_embeddings().weight
        embedding[PAD].copy_(0.02 * torch.randn(embedding.shape[1], generator=g))


def configs():
    common_llama = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                        num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, max_position_embeddings=64,
                        bos_token_id=1, eos_token_id=2, pad_token_id=0)
    gpt2 = dict(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return {
        "gpt2_tied": (GPT2Config(**gpt2), 12),
        "gpt2_untied": (GPT2Config(**gpt2, tie_word_embeddings=False, n_inner=48,
                                   activation_function="gelu",
                                   scale_attn_by_inverse_layer_idx=True), 12),
        "llama_gqa": (LlamaConfig(**common_llama), 12),
        "llama_linear_bias_tied": (LlamaConfig(**{**common_llama, "num_key_value_heads": 4},
                                               attention_bias=True, mlp_bias=True,
                                               tie_word_embeddings=True,
                                               rope_parameters={"rope_type": "linear",
                                                                "rope_theta": 10000.0,
                                                                "factor": 2.0}), 12),
        "llama_dynamic": (LlamaConfig(**{**common_llama, "max_position_embeddings": 16},
                                      rope_parameters={"rope_type": "dynamic",
                                                       "rope_theta": 10000.0,
                                                       "factor": 2.0}), 24),
        "llama3_head_dim": (LlamaConfig(**{**common_llama, "max_position_embeddings": 128},
                                        head_dim=16,
                                        rope_parameters={"rope_type": "llama3",
                                                         "rope_theta": 500000.0,
                                                         "factor": 8.0,
                                                         "low_freq_factor": 1.0,
                                                         "high_freq_factor": 4.0,
                                                         "original_max_position_embeddings": 32}),
                            12),
        "qwen2": (Qwen2Config(**common_llama), 12),
    }


def fresh(path):
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return model


def reference(path, seq):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, VOCAB, (2, seq), generator=g)
    # The pad token (Llama and Qwen2: the embedding's padding_idx, whose
    # gradient is zero) and the last token of the vocabulary.
    ids[0, 3] = PAD
    ids[1, 7] = PAD
    ids[0, 5] = VOCAB - 1
    ids[1, 2] = VOCAB - 1
    labels = ids.clone()
    labels[0, :2] = -100
    labels[1, 5] = -100
    padded_mask = torch.ones(2, seq, dtype=torch.long)
    padded_mask[0, :3] = 0
    ref = {"input_ids": ids, "labels": labels, "padded_mask": padded_mask}

    model = fresh(path).eval()
    with torch.no_grad():
        ref["logits"] = model(input_ids=ids).logits
    model = fresh(path).eval()
    with torch.no_grad():
        ref["logits_padded"] = model(input_ids=ids, attention_mask=padded_mask).logits

    model = fresh(path).train()
    out = model(input_ids=ids, labels=labels)
    out.loss.backward()
    ref["loss"] = out.loss.detach().reshape(1)
    for name, p in model.named_parameters():
        ref["grad." + name] = p.grad

    prompt = ids[:, : seq // 2].clone()
    prompt_mask = torch.ones_like(prompt)
    prompt[0, :2] = 0  # left padding with the pad token
    prompt_mask[0, :2] = 0
    model = fresh(path).eval()
    with torch.no_grad():
        gen = model.generate(input_ids=prompt, attention_mask=prompt_mask, max_new_tokens=8,
                             do_sample=False, pad_token_id=0, eos_token_id=2)
    ref["generate.input_ids"] = prompt
    ref["generate.attention_mask"] = prompt_mask
    ref["generate.output"] = gen
    return {k: v.contiguous() for k, v in ref.items()}


def warpers():
    """Sampling's logits processing, as generate() builds it."""
    logits = torch.randn(3, VOCAB, generator=torch.Generator().manual_seed(2))
    ref = {"logits": logits}
    for i, (temperature, top_k, top_p) in enumerate(WARPER_CASES):
        chain = LogitsProcessorList()
        if temperature != 1.0:
            chain.append(TemperatureLogitsWarper(temperature))
        if top_k:
            chain.append(TopKLogitsWarper(top_k))
        if top_p < 1.0:
            chain.append(TopPLogitsWarper(top_p))
        ref[f"warped.{i}"] = chain(None, logits.clone())
    return ref


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    save_file(warpers(), os.path.join(out, "warpers.safetensors"))
    for name, (config, seq) in configs().items():
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config)
        randomize(model)
        path = os.path.join(out, name)
        model.save_pretrained(path)
        save_file(reference(path, seq), os.path.join(path, "reference.safetensors"))
    print("wrote", len(configs()), "model references to", out)


if __name__ == "__main__":
    main()
