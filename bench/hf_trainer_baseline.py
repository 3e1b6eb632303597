"""The Hugging Face course's chapter-3 Trainer setup on the same model and data (the baseline).

python bench/hf_trainer_baseline.py --precision no|bf16 --out result.json [--seed 42] [--max-steps 150 --no-eval]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--precision", choices=["no", "bf16"], default="no")
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--max-steps", type=int, default=-1, help="optimizer steps instead of epochs (the short form)")
    parser.add_argument("--no-eval", action="store_true", help="no evaluation during or after training")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    from datasets import load_dataset
    from sklearn.metrics import accuracy_score, f1_score
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainingArguments, set_seed)  # fmt: skip

    from common import minilm_dir, mrpc_dir

    started = time.perf_counter()
    data = mrpc_dir()
    raw = load_dataset("json", data_files={"train": str(data / "train.jsonl"), "validation": str(data / "validation.jsonl")})
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    tokenized = raw.map(lambda b: tokenizer(b["sentence1"], b["sentence2"], truncation=True, max_length=128), batched=True)
    # TrainingArguments.seed is applied inside Trainer, after this model exists: without seeding here the new
    # classifier head is drawn from an unseeded generator and "seed 42" gives a different model on every run.
    set_seed(args.seed)
    model = AutoModelForSequenceClassification.from_pretrained(minilm_dir(), num_labels=2)

    def metrics(pred):
        predictions = np.argmax(pred.predictions, axis=-1)
        return {"accuracy": accuracy_score(pred.label_ids, predictions), "f1": f1_score(pred.label_ids, predictions)}

    training_args = TrainingArguments(
        output_dir="/tmp/ftl-bench-trainer", eval_strategy="no" if args.no_eval else "epoch", save_strategy="no",
        num_train_epochs=args.epochs, max_steps=args.max_steps, per_device_train_batch_size=8,
        per_device_eval_batch_size=16, learning_rate=5e-5, seed=args.seed,
        bf16=args.precision == "bf16", use_cpu=True, report_to=[], logging_steps=50, disable_tqdm=True,
    )  # fmt: skip
    trainer = Trainer(model, training_args, train_dataset=tokenized["train"], eval_dataset=tokenized["validation"],
                      data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer,
                      compute_metrics=metrics)  # fmt: skip
    train_started = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - train_started
    final = {} if args.no_eval else trainer.evaluate()
    result = {
        "train_seconds": round(train_seconds, 2),
        "wall_seconds": round(time.perf_counter() - started, 2),
        "validation_accuracy": final.get("eval_accuracy"),
        "validation_f1": final.get("eval_f1"),
        "steps": trainer.state.global_step,
    }
    with open(args.out, "w") as handle:
        json.dump(result, handle, indent=2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
