"""Reference data for ModelConfig's parser: what transformers makes of a config.json.

For GPT2Config, LlamaConfig and Qwen2Config: the config each writes with no
arguments (save_pretrained), a small config with every field remat reads set
away from its default, and variants of both with one field removed, one
optional field null, or the legacy RoPE fields. Each case is a directory holding config.json; in
cases.json every case lists what transformers holds after loading it, under
remat's field names: the config's values, and the model's shapes from a
model built on the meta device (biases, head_dim, key/value heads, the MLP
width, tied weights, the embedding's padding_idx). For the small configs the
parameter names and shapes are listed too. "error" marks a case transformers
cannot build a model from.

usage: config_defaults_oracle.py OUTDIR
"""

import copy
import dataclasses
import json
import os
import sys
import typing

import torch
from transformers import AutoConfig, AutoModelForCausalLM, GPT2Config, LlamaConfig, Qwen2Config

SMALL = {
    "gpt2": dict(vocab_size=100, n_positions=77, n_embd=96, n_layer=3, n_head=8, n_inner=40,
                 activation_function="relu", resid_pdrop=0.05, embd_pdrop=0.06, attn_pdrop=0.07,
                 layer_norm_epsilon=1e-6, initializer_range=0.03, scale_attn_weights=False,
                 scale_attn_by_inverse_layer_idx=True, tie_word_embeddings=False,
                 bos_token_id=5, eos_token_id=6, pad_token_id=7),
    "llama": dict(vocab_size=100, hidden_size=256, intermediate_size=96, num_hidden_layers=3,
                  num_attention_heads=64, num_key_value_heads=16, head_dim=8,
                  max_position_embeddings=77, rms_norm_eps=1e-5, hidden_act="gelu",
                  initializer_range=0.03, tie_word_embeddings=True, attention_dropout=0.1,
                  attention_bias=True, mlp_bias=True, bos_token_id=5, eos_token_id=[6, 8],
                  pad_token_id=7, rope_parameters={"rope_type": "default", "rope_theta": 12345.0}),
    # attention_bias and mlp_bias are not Qwen2Config fields: Qwen2's modeling
    # ignores them (q, k, v always have a bias, o and the MLP never).
    "qwen2": dict(vocab_size=100, hidden_size=256, intermediate_size=96, num_hidden_layers=3,
                  num_attention_heads=64, num_key_value_heads=16, head_dim=8,
                  max_position_embeddings=77, rms_norm_eps=1e-5, hidden_act="gelu",
                  initializer_range=0.03, tie_word_embeddings=True, attention_dropout=0.1,
                  attention_bias=True, mlp_bias=True, bos_token_id=5, eos_token_id=6,
                  pad_token_id=7, rope_parameters={"rope_type": "default", "rope_theta": 12345.0}),
}

CLASSES = {"gpt2": GPT2Config, "llama": LlamaConfig, "qwen2": Qwen2Config}

# The fields whose absence each case tests (those remat reads).
FIELDS = {
    "gpt2": ["vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "n_inner",
             "activation_function", "resid_pdrop", "embd_pdrop", "attn_pdrop",
             "layer_norm_epsilon", "initializer_range", "scale_attn_weights",
             "scale_attn_by_inverse_layer_idx", "tie_word_embeddings", "bos_token_id",
             "eos_token_id", "pad_token_id"],
    "llama": ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
              "num_attention_heads", "num_key_value_heads", "head_dim",
              "max_position_embeddings", "rms_norm_eps", "hidden_act", "initializer_range",
              "tie_word_embeddings", "attention_dropout", "attention_bias", "mlp_bias",
              "bos_token_id", "eos_token_id", "pad_token_id", "rope_parameters"],
}
FIELDS["qwen2"] = FIELDS["llama"]


def optional_fields(model_type):
    """The fields of FIELDS whose class annotation allows None (a JSON null)."""
    hints = {f.name: f.type for f in dataclasses.fields(CLASSES[model_type])}
    return [f for f in FIELDS[model_type]
            if f in hints and type(None) in typing.get_args(hints[f])]


def rope_variants(base):
    """Legacy and partial RoPE fields on a Llama-family config."""
    no_rope = {k: v for k, v in base.items() if k != "rope_parameters"}
    return {
        "rope_theta_only": {**no_rope, "rope_theta": 500000.0},
        "rope_scaling_linear_type": {**no_rope, "rope_theta": 20000.0,
                                     "rope_scaling": {"type": "linear", "factor": 3.0}},
        "rope_scaling_llama3_no_original": {
            **no_rope, "rope_scaling": {"rope_type": "llama3", "factor": 8.0,
                                        "low_freq_factor": 1.0, "high_freq_factor": 4.0}},
        "rope_parameters_without_theta": {**no_rope, "rope_theta": 30000.0,
                                          "rope_parameters": {"rope_type": "dynamic",
                                                              "factor": 2.0}},
        # transformers takes rope_scaling over rope_parameters.
        "rope_scaling_and_rope_parameters": {
            **base, "rope_scaling": {"rope_type": "linear", "factor": 4.0, "rope_theta": 777.0}},
    }


def shapes(model):
    return {name: list(p.shape) for name, p in model.named_parameters()}


def expected(model_type, path, with_parameters):
    """What transformers holds for the config.json in `path`."""
    try:
        config = AutoConfig.from_pretrained(path)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except Exception as e:  # noqa: BLE001 - the case records that building fails
        return {"error": f"{type(e).__name__}: {e}"}
    eos = config.eos_token_id
    out = {
        "model_type": model_type,
        "vocab_size": config.vocab_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "max_position_embeddings": config.max_position_embeddings,
        "initializer_range": config.initializer_range,
        "bos_token_id": config.bos_token_id,
        "eos_token_ids": [] if eos is None else (eos if isinstance(eos, list) else [eos]),
        "pad_token_id": config.pad_token_id,
        "tie_word_embeddings": model.lm_head.weight is model.get_input_embeddings().weight,
        "padding_idx": model.get_input_embeddings().padding_idx,
    }
    if model_type == "gpt2":
        block = model.transformer.h[0]
        out.update(
            hidden_size=model.transformer.wte.weight.shape[1],
            num_key_value_heads=block.attn.num_heads,
            intermediate_size=block.mlp.c_fc.weight.shape[1],
            activation_function=config.activation_function,
            resid_pdrop=block.attn.resid_dropout.p,
            embd_pdrop=model.transformer.drop.p,
            attn_pdrop=block.attn.attn_dropout.p,
            layer_norm_epsilon=block.ln_1.eps,
            scale_attn_weights=block.attn.scale_attn_weights,
            scale_attn_by_inverse_layer_idx=block.attn.scale_attn_by_inverse_layer_idx,
        )
    else:
        layer = model.model.layers[0]
        attn = layer.self_attn
        head_dim = attn.head_dim
        rope = config.rope_parameters
        out.update(
            hidden_size=model.model.embed_tokens.weight.shape[1],
            head_dim=head_dim,
            num_key_value_heads=attn.k_proj.weight.shape[0] // head_dim,
            intermediate_size=layer.mlp.gate_proj.weight.shape[0],
            rms_norm_eps=layer.input_layernorm.variance_epsilon,
            hidden_act=config.hidden_act,
            # A null attention_dropout applies none (in eval; training fails).
            attention_dropout=attn.attention_dropout or 0.0,
            qkv_bias=attn.q_proj.bias is not None,
            o_bias=attn.o_proj.bias is not None,
            mlp_bias=layer.mlp.gate_proj.bias is not None,
            rope_type=rope["rope_type"],
            rope_theta=rope["rope_theta"],
        )
        if rope["rope_type"] != "default":
            out["rope_factor"] = rope["factor"]
        if rope["rope_type"] == "llama3":
            out.update(low_freq_factor=rope["low_freq_factor"],
                       high_freq_factor=rope["high_freq_factor"],
                       original_max_position_embeddings=rope["original_max_position_embeddings"])
    if with_parameters:
        out["parameters"] = shapes(model)
    return out


def cases(model_type):
    """(name, config.json object, small) for every case of one model type."""
    cls = CLASSES[model_type]
    default = cls().to_dict()
    small = cls(**copy.deepcopy(SMALL[model_type])).to_dict()
    # to_dict() drops the fields that are no dataclass fields; keep them.
    for key in ("head_dim", "attention_bias", "mlp_bias"):
        if key in SMALL[model_type]:
            small[key] = SMALL[model_type][key]
    # Qwen2Config derives layer_types from num_hidden_layers; a saved list
    # would make the case without num_hidden_layers inconsistent.
    default.pop("layer_types", None)
    small.pop("layer_types", None)
    result = [("default", default, False), ("small", small, True)]
    for base_name, base, is_small in (("default", default, False), ("small", small, True)):
        for field in FIELDS[model_type]:
            if field in base:
                result.append((f"{base_name}_without_{field}",
                               {k: v for k, v in base.items() if k != field}, is_small))
        for field in optional_fields(model_type):
            result.append((f"{base_name}_null_{field}", {**base, field: None}, is_small))
        if model_type != "gpt2":
            for name, variant in rope_variants(base).items():
                result.append((f"{base_name}_{name}", variant, is_small))
    return result


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    index = {}
    for model_type in CLASSES:
        # transformers' own file for the default config, as save_pretrained writes it.
        saved = os.path.join(out, f"{model_type}_saved_default")
        CLASSES[model_type]().save_pretrained(saved)
        index[f"{model_type}_saved_default"] = expected(model_type, saved, False)
        for name, config_json, small in cases(model_type):
            case = f"{model_type}_{name}"
            path = os.path.join(out, case)
            os.makedirs(path, exist_ok=True)
            with open(os.path.join(path, "config.json"), "w") as f:
                json.dump(config_json, f, indent=2)
            index[case] = expected(model_type, path, small)
    with open(os.path.join(out, "cases.json"), "w") as f:
        json.dump(index, f, indent=1)
    print("wrote", len(index), "config cases to", out)


if __name__ == "__main__":
    main()
