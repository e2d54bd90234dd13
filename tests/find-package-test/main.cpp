// Checks that an installed remat is usable: one checkpointed training step
// gives the same gradient as the plain step, the tokenizer (with its
// Oniguruma and utf8proc link dependencies) encodes and decodes, and
// TrainingArguments parses a command line.
#include <remat/io/tokenizer.h>
#include <remat/remat.h>

#include <iostream>

int main() {
  torch::manual_seed(0);
  torch::nn::Linear layer(8, 8);
  auto x = torch::randn({4, 8});
  layer(x).tanh().sum().backward();
  auto plain = layer->weight.grad().clone();
  layer->zero_grad();
  remat::checkpoint(
      [&](const std::vector<torch::Tensor>& in) {
        return std::vector<torch::Tensor>{layer(in[0]).tanh()};
      },
      {x}, layer->parameters())[0]
      .sum()
      .backward();
  if (!torch::equal(plain, layer->weight.grad())) {
    std::cerr << "checkpointed gradient differs from the plain one\n";
    return 1;
  }
  const auto tok = remat::io::Tokenizer::from_json(R"({
    "normalizer": {"type": "NFC"},
    "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false},
    "decoder": {"type": "ByteLevel"},
    "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]}})");
  if (tok.encode("abba") != std::vector<int64_t>{2, 1, 0} || tok.decode({2, 1, 0}) != "abba") {
    std::cerr << "the tokenizer gives wrong ids\n";
    return 1;
  }
  const char* argv[] = {"consumer", "--learning_rate", "1e-3", "--gradient_checkpointing"};
  const auto args = remat::TrainingArguments::parse(4, argv);
  if (args.learning_rate != 1e-3 || !args.gradient_checkpointing ||
      remat::TrainingArguments::from_json(args.to_json()) != args) {
    std::cerr << "installed TrainingArguments misparsed its command line\n";
    return 1;
  }
  remat::logger()->info("installed remat works");
  return 0;
}
