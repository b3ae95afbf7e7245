"""What a bigger default backbone costs: slq-tiny-vl's recipe at larger language-model sizes.

    python benchmarks/default_size.py [--sizes 192x4x512,384x4x1024,384x8x1024,768x8x2048] [--steps 20]

Each size (hidden x layers x MLP width; `slq.recipes.pretrain.model_overrides`) is built from the
same world and tokenizer recipe, then measured on one CPU thread, as the shipped checkpoint was
pretrained: seconds per pretraining step (the default mixture, batch 32; median over --rounds,
sizes interleaved round by round so machine noise hits them alike) and seconds to SLQ-encode the
world's test images and captions (what every `slq demo` / `make karr` epoch pays). Ratios are to
the first size. `pretrain_minutes` projects the shipped recipe's 3,500 steps. Prints a table and,
last, one JSON object.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch


def parse_size(text: str) -> dict:
    hidden, layers, mlp = (int(x) for x in text.split("x"))
    return {"hidden_size": hidden, "num_layers": layers, "intermediate_size": mlp}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="192x4x512,384x4x1024,384x8x1024,768x8x2048",
                        help="comma-separated HIDDENxLAYERSxMLP; the first is the baseline (default: shipped size first)")
    parser.add_argument("--steps", type=int, default=20, help="pretraining steps timed per size and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--n-encode", type=int, default=64, help="test images (and as many captions) encoded")
    args = parser.parse_args()

    from safetensors.torch import load_file

    from slq.data.shapes import write_world
    from slq.recipes.pretrain import PretrainConfig, build_initial_model, pretrain
    from slq.retriever import SLQRetriever

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="slq-size-"))
    world = work / "world"
    write_world(world, n_train=200, n_val=2, n_test=args.n_encode, seed=0, progress=False)
    test = [json.loads(line) for line in (world / "test.jsonl").read_text().splitlines()]
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    names = [f"{s['hidden_size']}x{s['num_layers']}x{s['intermediate_size']}" for s in sizes]
    inits = {}
    for name, size in zip(names, sizes):
        inits[name] = build_initial_model(work / name / "init", world, seed=0, size=size)
    step_seconds: dict[str, list[float]] = {n: [] for n in names}
    encode_seconds: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        for name, size in zip(names, sizes):
            run = work / name / f"run{r}"
            shutil.copytree(inits[name], run / "init")
            config = PretrainConfig(steps=args.steps, stages=[], save_every=0, threads=1, **size)
            result = pretrain(run / "model", world, config, work_dir=run, resume=False, progress=False)
            step_seconds[name].append(result.seconds / args.steps)
            retriever = SLQRetriever.from_pretrained(str(inits[name]), num_queries=64)
            began = time.perf_counter()
            retriever.encode_text([rec["captions"][0] for rec in test], batch_size=32)
            retriever.encode_image([str(world / rec["image"]) for rec in test], batch_size=32)
            encode_seconds[name].append(time.perf_counter() - began)
            shutil.rmtree(run)
    rows = []
    base_step = statistics.median(step_seconds[names[0]])
    base_encode = statistics.median(encode_seconds[names[0]])
    for name in names:
        weights = load_file(str(inits[name] / "model.safetensors"))
        params = sum(t.numel() for t in weights.values())
        lm = sum(t.numel() for k, t in weights.items() if ".visual." not in k and not k.startswith("visual."))
        step, encode = statistics.median(step_seconds[name]), statistics.median(encode_seconds[name])
        rows.append({"size": name, "parameters": params, "language_model_parameters": lm,
                     "megabytes": round((inits[name] / "model.safetensors").stat().st_size / 2**20, 1),
                     "step_s": round(step, 4), "step_ratio": round(step / base_step, 2),
                     "pretrain_minutes": round(step * 3500 / 60, 1),
                     "encode_s": round(encode, 3), "encode_ratio": round(encode / base_encode, 2)})
    print(f"{'size':<14}{'params':>12}{'LM params':>12}{'MB':>8}{'s/step':>9}{'x':>7}{'3500 steps min':>16}"
          f"{'encode s':>10}{'x':>7}")
    for row in rows:
        print(f"{row['size']:<14}{row['parameters']:>12,}{row['language_model_parameters']:>12,}{row['megabytes']:>8}"
              f"{row['step_s']:>9}{row['step_ratio']:>7}{row['pretrain_minutes']:>16}{row['encode_s']:>10}"
              f"{row['encode_ratio']:>7}")
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"threads": 1, "steps": args.steps, "rounds": args.rounds, "n_encode": args.n_encode,
                      "sizes": rows}), flush=True)


if __name__ == "__main__":
    main()
