"""Anchor: the Hugging Face Trainer on remat-bench's shapes and settings.

Random-init GPT2LMHeadModel or LlamaForCausalLM (SDPA attention), random
tokens, bf16, AdamW (the Trainer's default optim), constant learning rate,
weight decay 0.1, gradient clipping 1.0, with or without
gradient_checkpointing. Peak = torch.cuda.max_memory_allocated over the timed
steps.

  python benchmarks/anchors/hf_trainer.py --preset gpt2-124m --bf16 \
      [--gradient_checkpointing] --json hf.json
"""

import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

import torch  # noqa: E402
import transformers  # noqa: E402


class Tokens(torch.utils.data.Dataset):
    def __init__(self, ids):
        self.ids = ids

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


class Timing(transformers.TrainerCallback):
    def __init__(self, timer):
        self.timer = timer
        self.losses = []

    def on_step_end(self, args, state, control, **kwargs):
        self.timer.step_end()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append(float(logs["loss"]))


def main():
    args, shape = common.parse_args(__doc__.splitlines()[0])
    transformers.set_seed(args.seed)
    transformers.logging.set_verbosity_error()
    config = common.hf_config(shape)
    config._attn_implementation = "sdpa"
    cls = transformers.GPT2LMHeadModel if shape["arch"] == "gpt2" else transformers.LlamaForCausalLM
    model = cls(config)
    data = Tokens(common.random_tokens(shape, shape["batch"] * (args.warmup + args.steps), args.seed))
    with tempfile.TemporaryDirectory() as out:
        targs = transformers.TrainingArguments(
            output_dir=out, per_device_train_batch_size=shape["batch"],
            max_steps=args.warmup + args.steps, logging_steps=1, learning_rate=3e-4,
            lr_scheduler_type="constant", weight_decay=0.1, bf16=args.bf16, save_strategy="no",
            report_to="none", gradient_checkpointing=args.gradient_checkpointing,
            dataloader_num_workers=0, use_cpu=args.device == "cpu", seed=args.seed,
            disable_tqdm=True)
        timer = common.StepTimer(args.device, args.warmup)
        timing = Timing(timer)
        trainer = transformers.Trainer(model=model, args=targs, train_dataset=data,
                                       callbacks=[timing])
        timer.start = __import__("time").perf_counter()
        trainer.train()
        optim = str(getattr(targs.optim, "value", targs.optim))
    tied = bool(getattr(config, "tie_word_embeddings", True))
    r = common.result("hf_trainer", args, shape, model, tied, timer, timing.losses, optim)
    r["versions"] = {"torch": torch.__version__, "transformers": transformers.__version__}
    common.report(r, args.json)


if __name__ == "__main__":
    main()
