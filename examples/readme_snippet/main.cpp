#include <remat/io/tokenizer.h>
#include <remat/models/causal_lm.h>
#include <remat/remat.h>
#include <remat/trainer.h>

// train --output_dir out --max_steps 200 --learning_rate 1e-4 --report_to jsonl
int main(int argc, char** argv) {
  auto args = remat::TrainingArguments::parse(argc, argv);
  args.gradient_checkpointing = true;  // recompute each layer's activations in backward

  auto model = remat::models::AutoModelForCausalLM::from_pretrained("tiny-llama");
  auto tok = remat::io::Tokenizer::from_pretrained("tiny-llama");
  auto train = std::make_shared<remat::data::CausalLMDataset>(
      std::vector<std::string>{"train.jsonl"},  // {"prompt": ..., "completion": ...} lines
      [&](std::string_view text) { return tok.encode(text, /*add_special_tokens=*/false); },
      remat::data::CausalLMDatasetOptions().max_seq_length(512).eos_token_id(tok.eos_token_id()));

  remat::Trainer trainer(model, args, train);
  trainer.train();  // logs loss, tokens/s; saves out/, which transformers loads
}
