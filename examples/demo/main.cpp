// remat-demo: trains the same small GPT-style model twice, without and with
// gradient checkpointing, and prints the memory and step time of both.
//
//   remat-demo                 # defaults, CUDA when present
//   remat-demo --device cpu --layers 8 --steps 40

#include <fmt/format.h>
#include <remat/remat.h>
#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>

namespace {

struct Config {
  int64_t layers = 6;
  int64_t dim = 256;
  int64_t heads = 4;
  int64_t vocab = 64;
  int64_t batch = 16;
  int64_t seq = 128;
  int64_t steps = 30;
  double lr = 3e-3;
  std::string device = "auto";
  bool deterministic = false;
};

// A pre-norm Transformer block; deriving from CheckpointableModule lets
// gradient_checkpointing_enable() mark it.
struct BlockImpl : remat::nn::CheckpointableModule {
  BlockImpl(int64_t dim, int64_t heads)
      : heads(heads),
        ln1(register_module("ln1", torch::nn::LayerNorm(torch::nn::LayerNormOptions({dim})))),
        qkv(register_module("qkv", torch::nn::Linear(dim, 3 * dim))),
        proj(register_module("proj", torch::nn::Linear(dim, dim))),
        ln2(register_module("ln2", torch::nn::LayerNorm(torch::nn::LayerNormOptions({dim})))),
        fc(register_module("fc", torch::nn::Linear(dim, 4 * dim))),
        out(register_module("out", torch::nn::Linear(4 * dim, dim))) {}

  torch::Tensor forward(torch::Tensor x) {
    auto b = x.size(0), t = x.size(1), d = x.size(2);
    auto q_k_v = qkv(ln1(x)).view({b, t, 3, heads, d / heads}).permute({2, 0, 3, 1, 4});
    auto y = at::scaled_dot_product_attention(q_k_v[0], q_k_v[1], q_k_v[2], {}, 0.0,
                                              /*is_causal=*/true);
    x = x + proj(y.transpose(1, 2).reshape({b, t, d}));
    return x + out(torch::gelu(fc(ln2(x)), "tanh"));
  }

  int64_t heads;
  torch::nn::LayerNorm ln1;
  torch::nn::Linear qkv, proj;
  torch::nn::LayerNorm ln2;
  torch::nn::Linear fc, out;
};
TORCH_MODULE(Block);

struct TinyGptImpl : torch::nn::Module {
  explicit TinyGptImpl(const Config& c)
      : tok(register_module("tok", torch::nn::Embedding(c.vocab, c.dim))),
        pos(register_module("pos", torch::nn::Embedding(c.seq, c.dim))),
        ln(register_module("ln", torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.dim})))),
        head(register_module("head", torch::nn::Linear(c.dim, c.vocab))) {
    auto list = register_module("blocks", torch::nn::ModuleList());
    for (int64_t i = 0; i < c.layers; ++i) {
      blocks.emplace_back(c.dim, c.heads);
      list->push_back(blocks.back());
    }
  }

  torch::Tensor forward(const torch::Tensor& ids) {
    auto positions = torch::arange(ids.size(1), ids.options());
    auto x = tok(ids) + pos(positions);
    for (auto& block : blocks) x = remat::nn::forward(block, x);
    return head(ln(x));
  }

  torch::nn::Embedding tok, pos;
  torch::nn::LayerNorm ln;
  torch::nn::Linear head;
  std::vector<Block> blocks;
};
TORCH_MODULE(TinyGpt);

// Arithmetic progressions modulo the vocabulary, each with its own start and
// stride: a model must read the stride from the context to continue one.
torch::Tensor make_batch(const Config& c, const torch::Device& device) {
  auto start = torch::randint(0, c.vocab, {c.batch, 1});
  auto stride = torch::randint(1, 8, {c.batch, 1});
  auto ids = (start + stride * torch::arange(c.seq + 1).unsqueeze(0)).remainder(c.vocab);
  return ids.to(device);
}

struct RunResult {
  double median_ms = 0;
  double tokens_per_s = 0;
  int64_t memory_bytes = 0;  // CUDA: peak allocated in a step; CPU: held after forward
  float first_loss = 0;
  float final_loss = 0;
};

RunResult train(const Config& c, const torch::Device& device, bool checkpointing) {
  torch::manual_seed(1234);
  TinyGpt model(c);
  model->to(device);
  if (checkpointing) remat::nn::gradient_checkpointing_enable(*model);
  torch::optim::AdamW optimizer(model->parameters(), torch::optim::AdamWOptions(c.lr));

  RunResult result;
  std::vector<double> times;
  for (int64_t step = 0; step < c.steps; ++step) {
    auto batch = make_batch(c, device);
    auto inputs = batch.narrow(1, 0, c.seq), targets = batch.narrow(1, 1, c.seq);
    if (device.is_cuda()) {
      torch::cuda::synchronize();
      remat::reset_peak_memory_stats(device);
    }
    auto start = std::chrono::steady_clock::now();
    const auto before_forward = remat::memory_allocated(device);
    auto logits = model->forward(inputs);
    auto loss = torch::cross_entropy_loss(logits.view({-1, c.vocab}), targets.reshape({-1}));
    const auto after_forward = remat::memory_allocated(device);
    optimizer.zero_grad();
    loss.backward();
    optimizer.step();
    auto loss_value = loss.item<float>();  // synchronizes
    auto ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    if (step >= 2) times.push_back(ms);  // the first steps warm up allocators and kernels
    if (step == 0) result.first_loss = loss_value;
    result.final_loss = loss_value;
    auto memory =
        device.is_cuda() ? remat::max_memory_allocated(device) : after_forward - before_forward;
    result.memory_bytes = std::max(result.memory_bytes, memory);
    if (step % 10 == 0 || step + 1 == c.steps) {
      remat::logger()->info("checkpointing {:>3} | step {:>3} | loss {:.4f} | {:.1f} ms",
                            checkpointing ? "on" : "off", step, loss_value, ms);
    }
  }
  std::sort(times.begin(), times.end());
  result.median_ms = times.empty() ? 0 : times[times.size() / 2];
  result.tokens_per_s = result.median_ms > 0 ? c.batch * c.seq / (result.median_ms / 1000) : 0;
  return result;
}

torch::Device pick_device(const std::string& name) {
  if (name == "auto") return torch::cuda::is_available() ? torch::kCUDA : torch::kCPU;
  if (name == "cuda") {
    TORCH_CHECK(torch::cuda::is_available(), "--device cuda: no CUDA device is available");
    return torch::kCUDA;
  }
  TORCH_CHECK(name == "cpu", "--device: invalid value \"", name,
              "\"; valid values are auto, cpu and cuda");
  return torch::kCPU;
}

}  // namespace

int main(int argc, char** argv) {
  Config c;
  CLI::App app{
      "Trains a small GPT-style model without and with gradient checkpointing and "
      "compares memory and step time."};
  app.add_option("--layers", c.layers, "Transformer blocks")->check(CLI::PositiveNumber);
  app.add_option("--dim", c.dim, "hidden size")->check(CLI::PositiveNumber);
  app.add_option("--heads", c.heads, "attention heads")->check(CLI::PositiveNumber);
  app.add_option("--batch", c.batch, "sequences per step")->check(CLI::PositiveNumber);
  app.add_option("--seq", c.seq, "tokens per sequence")->check(CLI::PositiveNumber);
  app.add_option("--steps", c.steps, "training steps per mode")->check(CLI::Range(3, 100000));
  app.add_option("--lr", c.lr, "AdamW learning rate")->check(CLI::PositiveNumber);
  app.add_option("--device", c.device, "auto, cpu or cuda");
  app.add_flag("--deterministic", c.deterministic,
               "use deterministic kernels only (on CUDA also set "
               "CUBLAS_WORKSPACE_CONFIG=:4096:8), so both runs give bitwise equal losses");
  CLI11_PARSE(app, argc, argv);

  try {
    TORCH_CHECK(c.dim % c.heads == 0, "--dim ", c.dim, " must be divisible by --heads ", c.heads);
    auto device = pick_device(c.device);
    at::globalContext().setDeterministicAlgorithms(c.deterministic, /*warn_only=*/false);
    remat::logger()->info("{} blocks, dim {}, batch {} x {} tokens, {} steps per mode, on {}",
                          c.layers, c.dim, c.batch, c.seq, c.steps, device.str());
    auto off = train(c, device, false);
    auto on = train(c, device, true);

    const char* memory_label = device.is_cuda() ? "peak allocated MiB" : "activations MiB";
    fmt::print("\n{:<24}{:>12}{:>14}{:>22}{:>14}\n", "gradient checkpointing", "step ms",
               "tokens/s", memory_label, "final loss");
    for (auto [name, r] : {std::pair{"off", off}, std::pair{"on", on}}) {
      fmt::print("{:<24}{:>12.1f}{:>14.0f}{:>22.1f}{:>14.4f}\n", name, r.median_ms, r.tokens_per_s,
                 r.memory_bytes / 1048576.0, r.final_loss);
    }
    fmt::print(
        "\ncheckpointing: {:+.0f}% memory, {:+.0f}% step time; loss {:.4f} -> {:.4f}\n",
        100.0 * (on.memory_bytes - off.memory_bytes) / std::max<int64_t>(off.memory_bytes, 1),
        100.0 * (on.median_ms - off.median_ms) / std::max(off.median_ms, 1e-9), on.first_loss,
        on.final_loss);
  } catch (const c10::Error& e) {
    remat::logger()->error("{}", e.what_without_backtrace());
    return 1;
  }
  return 0;
}
