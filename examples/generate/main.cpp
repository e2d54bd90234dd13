// remat-generate: continues a prompt with a Hugging Face model directory
// (GPT-2, Llama, Qwen2 and their tokenizer.json), greedy by default.
//
//   remat-generate --model_name_or_path out --prompt "123+456="
//   remat-generate --model_name_or_path out --prompt "Once" --do_sample --temperature 0.8 \
//       --top_p 0.9 --seed 1 --max_new_tokens 40

#include <fmt/format.h>
#include <remat/io/safetensors.h>
#include <remat/io/tokenizer.h>
#include <remat/models/causal_lm.h>
#include <remat/remat.h>
#include <remat/trainer.h>
#include <sys/stat.h>
#include <CLI/CLI.hpp>

#include <algorithm>
#include <iostream>

namespace {

int run(int argc, char** argv) {
  CLI::App app{"Generates a continuation of a prompt with a Hugging Face model directory.",
               "remat-generate"};
  std::string dir, prompt, device_name = "auto", logits_file;
  remat::models::GenerationConfig generation;
  int64_t seed = 0;
  bool print_ids = false;
  app.add_option("--model_name_or_path", dir,
                 "Model directory: config.json, safetensors weights, tokenizer.json")
      ->required();
  app.add_option("--prompt", prompt, "Text to continue")->required();
  app.add_option("--max_new_tokens", generation.max_new_tokens, "Tokens to generate")
      ->capture_default_str();
  app.add_flag("--do_sample", generation.do_sample, "Sample instead of greedy decoding");
  app.add_option("--temperature", generation.temperature, "Sampling temperature (> 0)")
      ->capture_default_str();
  app.add_option("--top_k", generation.top_k, "Keep the k most likely tokens (0: all)")
      ->capture_default_str();
  app.add_option("--top_p", generation.top_p, "Keep the smallest set with this probability")
      ->capture_default_str();
  app.add_option("--seed", seed, "Seed of the sampling")->capture_default_str();
  app.add_option("--device", device_name, "auto, cpu or cuda")->capture_default_str();
  app.add_flag("--print_ids", print_ids, "Also print the prompt and generated token ids");
  app.add_option("--logits_file", logits_file,
                 "Write the prompt's logits [1, tokens, vocab] as safetensors (key \"logits\")");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  struct stat st {};
  if (::stat((dir + "/config.json").c_str(), &st) != 0) {
    throw std::invalid_argument(
        fmt::format("--model_name_or_path {}: no config.json there; valid: a model directory as "
                    "transformers' save_pretrained writes it",
                    dir));
  }
  if (generation.max_new_tokens < 0) {
    throw std::invalid_argument(
        fmt::format("--max_new_tokens {}: valid: >= 0", generation.max_new_tokens));
  }
  if (!(generation.temperature > 0)) {
    throw std::invalid_argument(
        fmt::format("--temperature {}: valid: > 0", generation.temperature));
  }
  if (generation.top_k < 0) {
    throw std::invalid_argument(fmt::format("--top_k {}: valid: >= 0", generation.top_k));
  }
  if (!(generation.top_p > 0 && generation.top_p <= 1)) {
    throw std::invalid_argument(fmt::format("--top_p {}: valid: in (0, 1]", generation.top_p));
  }
  torch::Device device(torch::kCPU);
  if (device_name == "cuda" || (device_name == "auto" && torch::cuda::is_available())) {
    if (!torch::cuda::is_available()) {
      throw std::invalid_argument("--device cuda: no CUDA device is available; valid: auto, cpu");
    }
    device = torch::Device(torch::kCUDA, 0);
  } else if (device_name != "cpu" && device_name != "auto") {
    throw std::invalid_argument(fmt::format("--device {}: valid: auto, cpu, cuda", device_name));
  }
  generation.seed = static_cast<uint64_t>(seed);

  remat::models::FromPretrainedOptions options;
  options.device = device;
  auto model = remat::models::AutoModelForCausalLM::from_pretrained(dir, options);
  model->eval();
  const auto tok = remat::io::Tokenizer::from_pretrained(dir);
  const auto prompt_ids = tok.encode(prompt);
  auto ids = torch::tensor(prompt_ids, torch::kLong).unsqueeze(0).to(device);

  torch::NoGradGuard no_grad;
  if (!logits_file.empty()) {
    remat::models::CausalLMInputs in;
    in.input_ids = ids;
    remat::io::save_file({{"logits", model->forward(in).logits.to(torch::kFloat).cpu()}},
                         logits_file);
  }
  auto out = model->generate(ids, generation).cpu();
  std::vector<int64_t> new_ids(out.data_ptr<int64_t>() + prompt_ids.size(),
                               out.data_ptr<int64_t>() + out.size(1));
  // Up to and including the first EOS (what follows it is padding).
  const auto& eos = model->config().eos_token_ids;
  auto stop = std::find_if(new_ids.begin(), new_ids.end(), [&eos](int64_t id) {
    return std::find(eos.begin(), eos.end(), id) != eos.end();
  });
  if (stop != new_ids.end()) new_ids.erase(stop + 1, new_ids.end());
  std::cout << prompt << tok.decode(new_ids, /*skip_special_tokens=*/true) << "\n";
  if (print_ids) {
    std::cout << "prompt_ids: " << fmt::format("{}", fmt::join(prompt_ids, " ")) << "\n";
    std::cout << "generated_ids: " << fmt::format("{}", fmt::join(new_ids, " ")) << "\n";
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const c10::Error& e) {
    std::cerr << "remat-generate: error: " << e.what_without_backtrace() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "remat-generate: error: " << e.what() << "\n";
    return 1;
  }
}
