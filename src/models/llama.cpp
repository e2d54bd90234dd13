// The Llama family (transformers' LlamaForCausalLM, also Qwen2): RMSNorm,
// rotary embeddings (default, linear, dynamic, llama3), SwiGLU MLP,
// grouped-query attention.

#include <cmath>

#include "factory.h"
#include "layers.h"
#include "remat/nn/fused.h"
#include "remat/nn/linear.h"

namespace remat::models::detail {
namespace {

using torch::Tensor;
using Tensors = std::vector<Tensor>;

struct RMSNormImpl : torch::nn::Module {
  RMSNormImpl(int64_t dim, double eps)
      : eps(eps), weight(register_parameter("weight", torch::ones({dim}))) {}
  // transformers' LlamaRMSNorm; ATen's fused kernel on CUDA (remat::nn::rms_norm).
  // With `dtype`, the same then `.to(*dtype)`: on CUDA one kernel that rounds
  // the float32 result once to `dtype`, as a decoder layer's norms give
  // autocast's dtype to the projections that read them.
  Tensor forward(const Tensor& x, std::optional<at::ScalarType> dtype = std::nullopt) {
    return remat::nn::rms_norm(x, weight, eps, dtype);
  }
  double eps;
  Tensor weight;
};
TORCH_MODULE(RMSNorm);

// inv_freq as transformers computes it, in the same float32 torch ops so
// that the values agree to the last bit. Python's `scalar / tensor` is
// `tensor.reciprocal() * scalar`, which rounds differently from a division.
Tensor rdiv(double scalar, const Tensor& t) { return t.reciprocal() * scalar; }

Tensor base_inv_freq(double base, int64_t dim) {
  auto exponents = torch::arange(0, dim, 2, torch::kLong).to(torch::kFloat) / dim;
  return rdiv(1.0, torch::pow(base, exponents));
}

Tensor llama3_inv_freq(const RopeParameters& r, int64_t dim) {
  auto inv_freq = base_inv_freq(r.rope_theta, dim);
  const double old_len = static_cast<double>(r.original_max_position_embeddings);
  const double low_wavelen = old_len / r.low_freq_factor;
  const double high_wavelen = old_len / r.high_freq_factor;
  auto wavelen = rdiv(2 * M_PI, inv_freq);
  auto scaled = torch::where(wavelen > low_wavelen, inv_freq / r.factor, inv_freq);
  auto smooth =
      (rdiv(old_len, wavelen) - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor);
  auto smoothed = (1 - smooth) * scaled / r.factor + smooth * scaled;
  auto medium = (~(wavelen < high_wavelen)) & (~(wavelen > low_wavelen));
  return torch::where(medium, smoothed, scaled);
}

// Rotary embedding with transformers' state machine for "dynamic" (NTK)
// scaling: frequencies grow with the longest sequence seen and reset when a
// sequence fits the original context again.
class Rotary {
 public:
  Rotary(const ModelConfig& c)
      : rope_(c.rope), dim_(c.head_dim), max_pos_(c.max_position_embeddings) {
    original_ = initial_inv_freq();
    inv_freq_ = original_;
    cached_len_ = max_pos_;
  }

  // cos and sin [batch, tokens, head_dim] for `positions` [batch, tokens].
  std::pair<Tensor, Tensor> operator()(const Tensor& positions, torch::ScalarType dtype) {
    if (rope_.rope_type == "dynamic") update_dynamic(positions);
    torch::NoGradGuard no_grad;
    // A copy from pageable host memory waits for the device: copy once.
    if (!inv_device_.defined() || inv_device_.device() != positions.device()) {
      inv_device_ = inv_freq_.to(positions.device());
    }
    const auto& inv = inv_device_;
    auto freqs = positions.to(torch::kFloat).unsqueeze(-1) * inv.view({1, 1, -1});
    auto emb = torch::cat({freqs, freqs}, -1);
    return {emb.cos().to(dtype), emb.sin().to(dtype)};
  }

 private:
  Tensor initial_inv_freq() const {
    if (rope_.rope_type == "linear") return base_inv_freq(rope_.rope_theta, dim_) / rope_.factor;
    if (rope_.rope_type == "llama3") return llama3_inv_freq(rope_, dim_);
    return base_inv_freq(rope_.rope_theta, dim_);
  }

  void update_dynamic(const Tensor& positions) {
    const int64_t seq_len = positions.max().item<int64_t>() + 1;
    if (seq_len > cached_len_) {
      // transformers evaluates this on float32 tensors (seq_len is a tensor).
      auto len = torch::tensor(static_cast<float>(seq_len));
      auto ratio = rope_.factor * len / static_cast<float>(max_pos_) - (rope_.factor - 1);
      auto base = rope_.rope_theta * torch::pow(ratio, static_cast<double>(dim_) / (dim_ - 2));
      auto exponents = torch::arange(0, dim_, 2, torch::kLong).to(torch::kFloat) / dim_;
      inv_freq_ = rdiv(1.0, torch::pow(base, exponents));
      inv_device_ = Tensor();
      cached_len_ = seq_len;
    }
    if (seq_len < max_pos_ && cached_len_ > max_pos_) {
      inv_freq_ = original_;
      inv_device_ = Tensor();
      cached_len_ = max_pos_;
    }
  }

  RopeParameters rope_;
  int64_t dim_, max_pos_;
  Tensor original_, inv_freq_;
  Tensor inv_device_;  // inv_freq_ on the device of the last call
  int64_t cached_len_;
};

// The projections: a torch::nn::LinearImpl (same options and parameters)
// whose forward is remat::nn::linear, so under CUDA autocast their weight
// and bias gradients come out in float32 directly; elsewhere the forward is
// torch::nn::Linear's. The LM head stays a plain torch::nn::Linear.
struct ProjectionImpl : torch::nn::LinearImpl {
  using torch::nn::LinearImpl::LinearImpl;
  Tensor forward(const Tensor& x) { return remat::nn::linear(x, weight, bias); }
};
TORCH_MODULE(Projection);

torch::nn::Linear linear(int64_t in, int64_t out, bool bias) {
  return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(bias));
}

Projection projection(int64_t in, int64_t out, bool bias) {
  return Projection(torch::nn::LinearOptions(in, out).bias(bias));
}

struct LlamaAttentionImpl : torch::nn::Module {
  explicit LlamaAttentionImpl(const ModelConfig& c)
      : heads(c.num_attention_heads),
        kv_heads(c.num_key_value_heads),
        head_dim(c.head_dim),
        dropout(c.attention_dropout),
        q_proj(register_module("q_proj", projection(c.hidden_size, heads * head_dim, c.qkv_bias))),
        k_proj(
            register_module("k_proj", projection(c.hidden_size, kv_heads * head_dim, c.qkv_bias))),
        v_proj(
            register_module("v_proj", projection(c.hidden_size, kv_heads * head_dim, c.qkv_bias))),
        o_proj(register_module("o_proj", projection(heads * head_dim, c.hidden_size, c.o_bias))) {}

  // Returns {output} or, with use_cache, {output, keys, values}.
  Tensors forward(const Tensor& x, const Tensor& cos, const Tensor& sin,
                  const std::optional<Tensor>& mask, bool is_causal,
                  const std::optional<Tensor>& past_k, const std::optional<Tensor>& past_v,
                  bool use_cache) {
    auto b = x.size(0), t = x.size(1);
    // Rotary embeddings on the [b, t, heads, head_dim] projections (one fused
    // kernel each on CUDA), then [b, heads, t, head_dim] for attention. Under
    // autocast they come out in its dtype, the dtype attention casts them to.
    auto q =
        remat::nn::rotary(q_proj(x).view({b, t, heads, head_dim}), cos, sin, autocast_dtype(cos))
            .transpose(1, 2);
    auto k =
        remat::nn::rotary(k_proj(x).view({b, t, kv_heads, head_dim}), cos, sin, autocast_dtype(cos))
            .transpose(1, 2);
    auto v = v_proj(x).view({b, t, kv_heads, head_dim}).transpose(1, 2);
    if (past_k) {
      k = torch::cat({*past_k, k}, 2);
      v = torch::cat({*past_v, v}, 2);
    }
    auto y = attention(q, k, v, {mask, is_causal}, std::pow(static_cast<double>(head_dim), -0.5),
                       is_training() ? dropout : 0.0);
    y = o_proj(y);
    if (use_cache) return {y, k, v};
    return {y};
  }

  int64_t heads, kv_heads, head_dim;
  double dropout;
  Projection q_proj, k_proj, v_proj, o_proj;
};
TORCH_MODULE(LlamaAttention);

struct LlamaMLPImpl : torch::nn::Module {
  explicit LlamaMLPImpl(const ModelConfig& c)
      : hidden_act(c.hidden_act),
        gate_proj(register_module("gate_proj",
                                  projection(c.hidden_size, c.intermediate_size, c.mlp_bias))),
        up_proj(
            register_module("up_proj", projection(c.hidden_size, c.intermediate_size, c.mlp_bias))),
        down_proj(register_module("down_proj",
                                  projection(c.intermediate_size, c.hidden_size, c.mlp_bias))) {}
  // The activation product act(gate_proj(x)) * up_proj(x): for SiLU (SwiGLU)
  // one fused kernel on CUDA (remat::nn::swiglu).
  Tensor act(const Tensor& x) {
    auto gate = gate_proj(x);
    auto up = up_proj(x);
    if (hidden_act == "silu" || hidden_act == "swish") return remat::nn::swiglu(gate, up);
    return activation(hidden_act, gate) * up;
  }
  Tensor forward(const Tensor& x) { return down_proj(act(x)); }
  std::string hidden_act;
  Projection gate_proj, up_proj, down_proj;
};
TORCH_MODULE(LlamaMLP);

struct LlamaDecoderLayerImpl : nn::CheckpointableModule {
  explicit LlamaDecoderLayerImpl(const ModelConfig& c)
      : self_attn(register_module("self_attn", LlamaAttention(c))),
        mlp(register_module("mlp", LlamaMLP(c))),
        input_layernorm(register_module("input_layernorm", RMSNorm(c.hidden_size, c.rms_norm_eps))),
        post_attention_layernorm(
            register_module("post_attention_layernorm", RMSNorm(c.hidden_size, c.rms_norm_eps))) {}

  Tensors forward(const Tensor& x, const Tensor& cos, const Tensor& sin,
                  const std::optional<Tensor>& mask, bool is_causal,
                  const std::optional<Tensor>& past_k, const std::optional<Tensor>& past_v,
                  bool use_cache) {
    auto h = input_layernorm->forward(x, autocast_dtype(x));
    auto a =
        checkpoints(nn::Granularity::kAttention)
            ? remat::checkpoint(self_attn, h, cos, sin, mask, is_causal, past_k, past_v, use_cache)
            : self_attn->forward(h, cos, sin, mask, is_causal, past_k, past_v, use_cache);
    auto y = x + a[0];
    y = y + mlp_forward(y);
    if (use_cache) return {y, a[1], a[2]};
    return {y};
  }

  // The whole layer checkpointed (see nn::forward): everything up to the
  // MLP's down projection is the region; the projection and the last
  // residual add run once. Checkpointing in training keeps no KV cache.
  Tensors checkpointed_forward(const Tensor& x, const Tensor& cos, const Tensor& sin,
                               const std::optional<Tensor>& mask, bool is_causal,
                               const std::optional<Tensor>& past_k,
                               const std::optional<Tensor>& past_v, bool use_cache) {
    TORCH_CHECK(!use_cache && !past_k && !past_v,
                "a checkpointing Llama layer takes no KV cache (use_cache is forced off while "
                "checkpointing in training)");
    const auto params = trainable_parameters_of({input_layernorm.get(), self_attn.get(),
                                                 post_attention_layernorm.get(),
                                                 mlp->gate_proj.get(), mlp->up_proj.get()});
    auto region = [this, cos, sin, mask, is_causal](const Tensors& in) {
      auto h = input_layernorm->forward(in[0], autocast_dtype(in[0]));
      auto a = self_attn->forward(h, cos, sin, mask, is_causal, std::nullopt, std::nullopt, false);
      auto y = in[0] + a[0];
      return Tensors{y, mlp->act(post_attention_layernorm->forward(y, autocast_dtype(y)))};
    };
    return {remat::checkpoint_without_output(
        region, {x}, params,
        [this](const Tensors& o) { return Tensors{o[0] + mlp->down_proj(o[1])}; },
        checkpoint_options())[0]};
  }

  // The MLP and its norm on the residual stream `y`.
  Tensor mlp_forward(const Tensor& y) {
    auto h = post_attention_layernorm->forward(y, autocast_dtype(y));
    if (checkpoints(nn::Granularity::kMlpUp)) {
      const auto params = trainable_parameters_of({mlp->gate_proj.get(), mlp->up_proj.get()});
      return remat::checkpoint_without_output(
          [this](const Tensors& in) { return Tensors{mlp->act(in[0])}; }, {h}, params,
          [this](const Tensors& a) { return Tensors{mlp->down_proj(a[0])}; },
          checkpoint_options())[0];
    }
    return checkpoints(nn::Granularity::kMlp) ? remat::checkpoint(mlp, h) : mlp(h);
  }

  LlamaAttention self_attn;
  LlamaMLP mlp;
  RMSNorm input_layernorm, post_attention_layernorm;
};
TORCH_MODULE(LlamaDecoderLayer);

// transformers builds the embedding with padding_idx = pad_token_id: the pad
// token's row gets no gradient. torch takes a negative index from the end; an
// id outside [-vocab_size, vocab_size) has no row and no padding_idx.
torch::nn::EmbeddingOptions embedding_options(const ModelConfig& c) {
  auto options = torch::nn::EmbeddingOptions(c.vocab_size, c.hidden_size);
  const auto pad = c.pad_token_id;
  if (pad && *pad >= -c.vocab_size && *pad < c.vocab_size) options.padding_idx(*pad);
  return options;
}

struct LlamaModelImpl : torch::nn::Module {
  explicit LlamaModelImpl(const ModelConfig& c)
      : embed_tokens(register_module("embed_tokens", torch::nn::Embedding(embedding_options(c)))),
        layers(register_module("layers", torch::nn::ModuleList())),
        norm(register_module("norm", RMSNorm(c.hidden_size, c.rms_norm_eps))) {
    for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
      blocks.emplace_back(c);
      layers->push_back(blocks.back());
    }
  }
  torch::nn::Embedding embed_tokens;
  torch::nn::ModuleList layers;
  RMSNorm norm;
  std::vector<LlamaDecoderLayer> blocks;
};
TORCH_MODULE(LlamaModel);

class LlamaForCausalLM : public CausalLMImpl {
 public:
  explicit LlamaForCausalLM(const ModelConfig& c)
      : CausalLMImpl(c), model(register_module("model", LlamaModel(c))), rotary_(c) {
    if (!c.tie_word_embeddings) {
      lm_head = register_module("lm_head", linear(c.hidden_size, c.vocab_size, false));
    }
    init_weights();
  }

  CausalLMOutput forward(const CausalLMInputs& in) override {
    auto& blocks = model->blocks;
    auto d = prepare_decoder(in, blocks);
    auto x = model->embed_tokens(in.input_ids);
    const auto rope = rotary_(d.positions, x.scalar_type());
    const auto& cos = rope.first;
    const auto& sin = rope.second;
    auto [h, cache] = run_layers(
        blocks, x, d,
        [&](LlamaDecoderLayer& layer, const Tensor& hidden, const std::optional<Tensor>& past_k,
            const std::optional<Tensor>& past_v, bool use_cache) {
          return nn::forward(layer, hidden, cos, sin, d.mask.mask, d.mask.is_causal, past_k, past_v,
                             use_cache);
        });
    h = model->norm(h);
    return make_output(h, lm_head ? lm_head->weight : model->embed_tokens->weight, in,
                       std::move(cache));
  }

  void init_weights() override {
    torch::NoGradGuard no_grad;
    for (auto& item : named_parameters()) {
      const auto& name = item.key();
      auto& p = item.value();
      if (name.find("norm") != std::string::npos) {
        p.fill_(1.0);
      } else if (name.size() >= 4 && name.compare(name.size() - 4, 4, "bias") == 0) {
        p.zero_();
      } else {
        p.normal_(0.0, config_.initializer_range);
      }
    }
    // As transformers' init: the padding row starts at zero.
    const auto& padding_idx = model->embed_tokens->options.padding_idx();
    if (padding_idx) model->embed_tokens->weight[*padding_idx].zero_();
  }

 protected:
  std::vector<std::string> tied_weight_names() const override {
    if (config_.tie_word_embeddings) return {"lm_head.weight"};
    return {};
  }

  std::string canonical_name(const std::string& name) const override {
    if (name.find("rotary_emb.inv_freq") != std::string::npos) return "";
    return name;
  }

 private:
  LlamaModel model;
  torch::nn::Linear lm_head{nullptr};
  Rotary rotary_;
};

}  // namespace

std::shared_ptr<CausalLMImpl> make_llama(const ModelConfig& config) {
  return std::make_shared<LlamaForCausalLM>(config);
}

}  // namespace remat::models::detail
