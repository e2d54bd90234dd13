// GPT-2 (transformers' GPT2LMHeadModel): learned positions, LayerNorm,
// Conv1D-layout projections, tied LM head.

#include <cmath>

#include "factory.h"
#include "layers.h"
#include "remat/nn/linear.h"

namespace remat::models::detail {
namespace {

using torch::Tensor;
using Tensors = std::vector<Tensor>;

// transformers' Conv1D: y = x W + b with W stored [in, out]. Under CUDA
// autocast the weight and bias gradients come out in float32 directly
// (remat::nn::linear); elsewhere this is addmm on the rows of x.
struct Conv1DImpl : torch::nn::Module {
  Conv1DImpl(int64_t in, int64_t out)
      : weight(register_parameter("weight", torch::empty({in, out}))),
        bias(register_parameter("bias", torch::zeros({out}))) {}
  Tensor forward(const Tensor& x) {
    return remat::nn::linear(x, weight, bias, remat::nn::WeightLayout::kInOut);
  }
  Tensor weight, bias;
};
TORCH_MODULE(Conv1D);

struct GPT2AttentionImpl : torch::nn::Module {
  GPT2AttentionImpl(const ModelConfig& c, int64_t layer)
      : heads(c.num_attention_heads),
        dropout(c.attn_pdrop),
        resid_dropout(c.resid_pdrop),
        c_attn(register_module("c_attn", Conv1D(c.hidden_size, 3 * c.hidden_size))),
        c_proj(register_module("c_proj", Conv1D(c.hidden_size, c.hidden_size))) {
    const double head_dim = static_cast<double>(c.hidden_size / heads);
    scale = c.scale_attn_weights ? std::pow(head_dim, -0.5) : 1.0;
    if (c.scale_attn_by_inverse_layer_idx) scale /= static_cast<double>(layer + 1);
  }

  // Returns {output} or, with use_cache, {output, keys, values}.
  Tensors forward(const Tensor& x, const std::optional<Tensor>& mask, bool is_causal,
                  const std::optional<Tensor>& past_k, const std::optional<Tensor>& past_v,
                  bool use_cache) {
    auto b = x.size(0), t = x.size(1), d = x.size(2);
    auto qkv = c_attn(x).view({b, t, 3, heads, d / heads}).permute({2, 0, 3, 1, 4});
    auto q = qkv[0], k = qkv[1], v = qkv[2];
    if (past_k) {
      k = torch::cat({*past_k, k}, 2);
      v = torch::cat({*past_v, v}, 2);
    }
    auto y = attention(q, k, v, {mask, is_causal}, scale, is_training() ? dropout : 0.0);
    y = torch::dropout(c_proj(y), resid_dropout, is_training());
    if (use_cache) return {y, k, v};
    return {y};
  }

  int64_t heads;
  double scale = 1.0, dropout, resid_dropout;
  Conv1D c_attn, c_proj;
};
TORCH_MODULE(GPT2Attention);

struct GPT2MLPImpl : torch::nn::Module {
  explicit GPT2MLPImpl(const ModelConfig& c)
      : act(c.activation_function),
        dropout(c.resid_pdrop),
        c_fc(register_module("c_fc", Conv1D(c.hidden_size, c.intermediate_size))),
        c_proj(register_module("c_proj", Conv1D(c.intermediate_size, c.hidden_size))) {}
  Tensor forward(const Tensor& x) { return down(up(x)); }
  // The hidden activation, and the output projection of it.
  Tensor up(const Tensor& x) { return activation(act, c_fc(x)); }
  Tensor down(const Tensor& h) { return torch::dropout(c_proj(h), dropout, is_training()); }
  std::string act;
  double dropout;
  Conv1D c_fc, c_proj;
};
TORCH_MODULE(GPT2MLP);

struct GPT2BlockImpl : nn::CheckpointableModule {
  GPT2BlockImpl(const ModelConfig& c, int64_t layer)
      : ln_1(register_module(
            "ln_1", torch::nn::LayerNorm(
                        torch::nn::LayerNormOptions({c.hidden_size}).eps(c.layer_norm_epsilon)))),
        attn(register_module("attn", GPT2Attention(c, layer))),
        ln_2(register_module(
            "ln_2", torch::nn::LayerNorm(
                        torch::nn::LayerNormOptions({c.hidden_size}).eps(c.layer_norm_epsilon)))),
        mlp(register_module("mlp", GPT2MLP(c))) {}

  Tensors forward(const Tensor& x, const std::optional<Tensor>& mask, bool is_causal,
                  const std::optional<Tensor>& past_k, const std::optional<Tensor>& past_v,
                  bool use_cache) {
    auto h = ln_1(x);
    auto a = checkpoints(nn::Granularity::kAttention)
                 ? remat::checkpoint(attn, h, mask, is_causal, past_k, past_v, use_cache)
                 : attn->forward(h, mask, is_causal, past_k, past_v, use_cache);
    auto y = x + a[0];
    y = y + mlp_forward(y);
    if (use_cache) return {y, a[1], a[2]};
    return {y};
  }

  // The whole block checkpointed (see nn::forward): everything up to the
  // MLP's output projection is the region; the projection and the last
  // residual add run once. Checkpointing in training keeps no KV cache.
  Tensors checkpointed_forward(const Tensor& x, const std::optional<Tensor>& mask, bool is_causal,
                               const std::optional<Tensor>& past_k,
                               const std::optional<Tensor>& past_v, bool use_cache) {
    TORCH_CHECK(!use_cache && !past_k && !past_v,
                "a checkpointing GPT-2 block takes no KV cache (use_cache is forced off while "
                "checkpointing in training)");
    const auto params =
        trainable_parameters_of({ln_1.get(), attn.get(), ln_2.get(), mlp->c_fc.get()});
    auto region = [this, mask, is_causal](const Tensors& in) {
      auto a = attn->forward(ln_1(in[0]), mask, is_causal, std::nullopt, std::nullopt, false);
      auto y = in[0] + a[0];
      return Tensors{y, mlp->up(autocast_input(ln_2(y)))};
    };
    return {remat::checkpoint_without_output(
        region, {x}, params, [this](const Tensors& o) { return Tensors{o[0] + mlp->down(o[1])}; },
        checkpoint_options())[0]};
  }

  // ln_2 and the MLP on the residual stream `y`.
  Tensor mlp_forward(const Tensor& y) {
    auto h = ln_2(y);
    if (checkpoints(nn::Granularity::kMlpUp)) {
      // The norm's output in the dtype c_fc reads (what it would keep) is the
      // region's input.
      return remat::checkpoint_without_output(
          [this](const Tensors& in) { return Tensors{mlp->up(in[0])}; }, {autocast_input(h)},
          trainable_parameters(*mlp->c_fc),
          [this](const Tensors& a) { return Tensors{mlp->down(a[0])}; }, checkpoint_options())[0];
    }
    return checkpoints(nn::Granularity::kMlp) ? remat::checkpoint(mlp, h) : mlp(h);
  }

  torch::nn::LayerNorm ln_1;
  GPT2Attention attn;
  torch::nn::LayerNorm ln_2;
  GPT2MLP mlp;
};
TORCH_MODULE(GPT2Block);

struct GPT2ModelImpl : torch::nn::Module {
  explicit GPT2ModelImpl(const ModelConfig& c)
      : wte(register_module("wte", torch::nn::Embedding(c.vocab_size, c.hidden_size))),
        wpe(register_module("wpe", torch::nn::Embedding(c.max_position_embeddings, c.hidden_size))),
        h(register_module("h", torch::nn::ModuleList())),
        ln_f(register_module(
            "ln_f", torch::nn::LayerNorm(
                        torch::nn::LayerNormOptions({c.hidden_size}).eps(c.layer_norm_epsilon)))) {
    for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
      blocks.emplace_back(c, i);
      h->push_back(blocks.back());
    }
  }
  torch::nn::Embedding wte, wpe;
  torch::nn::ModuleList h;
  torch::nn::LayerNorm ln_f;
  std::vector<GPT2Block> blocks;
};
TORCH_MODULE(GPT2Model);

class GPT2LMHeadModel : public CausalLMImpl {
 public:
  explicit GPT2LMHeadModel(const ModelConfig& c)
      : CausalLMImpl(c), transformer(register_module("transformer", GPT2Model(c))) {
    if (!c.tie_word_embeddings) {
      lm_head = register_module(
          "lm_head",
          torch::nn::Linear(torch::nn::LinearOptions(c.hidden_size, c.vocab_size).bias(false)));
    }
    init_weights();
  }

  CausalLMOutput forward(const CausalLMInputs& in) override {
    auto& blocks = transformer->blocks;
    auto d = prepare_decoder(in, blocks);
    // Default positions end at past + tokens - 1, known without reading the
    // device; explicit ones are read back (a host sync) to keep the check.
    const auto last_position =
        in.position_ids ? d.positions.max().item<int64_t>() : d.past_len + in.input_ids.size(1) - 1;
    TORCH_CHECK(last_position < config_.max_position_embeddings, "GPT-2 position ", last_position,
                " is beyond n_positions ", config_.max_position_embeddings);
    auto x = transformer->wte(in.input_ids) + transformer->wpe(d.positions);
    x = torch::dropout(x, config_.embd_pdrop, is_training());
    auto [h, cache] =
        run_layers(blocks, x, d,
                   [&](GPT2Block& block, const Tensor& hidden, const std::optional<Tensor>& past_k,
                       const std::optional<Tensor>& past_v, bool use_cache) {
                     return nn::forward(block, hidden, d.mask.mask, d.mask.is_causal, past_k,
                                        past_v, use_cache);
                   });
    h = transformer->ln_f(h);
    return make_output(h, lm_head ? lm_head->weight : transformer->wte->weight, in,
                       std::move(cache));
  }

  void init_weights() override {
    torch::NoGradGuard no_grad;
    const double std = config_.initializer_range;
    for (auto& item : named_parameters()) {
      const auto& name = item.key();
      auto& p = item.value();
      if (name.find("ln_") != std::string::npos) {
        name.size() >= 6 && name.compare(name.size() - 6, 6, "weight") == 0 ? p.fill_(1.0)
                                                                            : p.zero_();
      } else if (name.size() >= 4 && name.compare(name.size() - 4, 4, "bias") == 0) {
        p.zero_();
      } else if (name.find("c_proj.weight") != std::string::npos) {
        // GPT-2's scaled init of the projections into the residual stream.
        p.normal_(0.0, std / std::sqrt(2.0 * config_.num_hidden_layers));
      } else {
        p.normal_(0.0, std);
      }
    }
  }

 protected:
  std::vector<std::string> tied_weight_names() const override {
    if (config_.tie_word_embeddings) return {"lm_head.weight"};
    return {};
  }

  std::string canonical_name(const std::string& name) const override {
    // Causal-mask buffers of older checkpoints.
    if (name.find(".attn.bias") != std::string::npos ||
        name.find(".attn.masked_bias") != std::string::npos) {
      return "";
    }
    // GPT2Model checkpoints (e.g. the original "gpt2") lack the prefix.
    if (name.rfind("transformer.", 0) != 0 && name.rfind("lm_head.", 0) != 0) {
      return "transformer." + name;
    }
    return name;
  }

 private:
  GPT2Model transformer;
  torch::nn::Linear lm_head{nullptr};
};

}  // namespace

std::shared_ptr<CausalLMImpl> make_gpt2(const ModelConfig& config) {
  return std::make_shared<GPT2LMHeadModel>(config);
}

}  // namespace remat::models::detail
