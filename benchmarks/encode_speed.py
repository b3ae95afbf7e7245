"""Encoding throughput of SLQ against the bare frozen forward over the same inputs.

    python benchmarks/encode_speed.py [--backbone DIR | --config dims.json] [--n 64 --batch-size 16]

Methods, interleaved round by round in one process so machine noise hits them alike:
  forward           the frozen model over the prompts alone, no grad (the floor)
  forward_queries   the same prompts with the N_q query tokens appended, no grad
  encode            SLQRetriever.encode_text + encode_image (public API: length-sorted batching,
                    preparation, pooling, normalisation)
Each reads the same captions and image files and prepares its own batches. `encode_over_forward`
(time ratio, lower is better) is the end-to-end cost of SLQ encoding over the bare forward;
`encode_over_forward_queries` isolates slq's own overhead beyond the extra query tokens.
Prints a table and, last, one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_model_options(parser)
    parser.add_argument("--n", type=int, default=64, help="captions and images encoded per round (default 64)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from slq.backbone import Backbone
    from slq.baselines import PooledEncoder
    from slq.retriever import SLQRetriever

    backbone = Backbone.load(common.build_backbone_dir(args), dtype=getattr(torch, args.dtype), device=args.device)
    slq, bare = SLQRetriever.fresh(backbone, num_queries=20), PooledEncoder(backbone, "last", one_word_prompt=False)
    texts = common.texts(args.n)
    images = common.images(args.n, args.image_side, Path(tempfile.mkdtemp(prefix="slq-bench-images-")))
    size = args.batch_size

    def batched(encoder):
        def run():
            with torch.no_grad():
                for start in range(0, args.n, size):
                    encoder.embed(encoder.text_batch(texts[start:start + size]))
                    encoder.embed(encoder.image_batch(images[start:start + size]))
        return run

    methods = {
        "forward": batched(bare),
        "forward_queries": batched(slq),
        "encode": lambda: (slq.encode_text(texts, batch_size=size, show_progress_bar=False),
                           slq.encode_image(images, batch_size=size, show_progress_bar=False)),
    }
    times = common.interleaved(methods, args.rounds)
    seconds = {name: common.median(t) for name, t in times.items()}
    print(f"\n{args.n} captions + {args.n} images, batch {size}, device {args.device}, {args.dtype}, "
          f"median of {args.rounds} rounds")
    print(f"{'method':<18}{'seconds':>9}{'items/s':>9}")
    for name, s in seconds.items():
        print(f"{name:<18}{s:>9.2f}{2 * args.n / s:>9.1f}")
    summary = {"seconds": seconds, "all_seconds": times,
               "encode_over_forward": seconds["encode"] / seconds["forward"],
               "encode_over_forward_queries": seconds["encode"] / seconds["forward_queries"]}
    print(f"\nencode_over_forward={summary['encode_over_forward']:.3f}  "
          f"encode_over_forward_queries={summary['encode_over_forward_queries']:.3f}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
