"""Input preparation throughput: images/s turned into a model's inputs, in the main process against
worker processes, and with the PIL image processor against the fast (torchvision) one.

    python benchmarks/prepare_speed.py [--backbone DIR | --config dims.json] [--n 256 --batch-size 32]

Preparing is what a training step or `slq embed` does before the model runs: open and decode
each image file, run the checkpoint's image processor, render and tokenise the prompts
(`Encoder.build_batch`). No model runs here, so the figures are the ceiling preparation puts on a
GPU step. Methods, interleaved round by round so machine noise hits them alike:
  in_process        the main process, one batch after another (slq before workers; --workers 0)
  workers_K         K DataLoader worker processes preparing ahead (`slq.prefetch.prepare_ahead`), for
                    K in 1, 2 and the machine's cores
  fast_in_process   the main process with transformers' torchvision image processor, when torchvision
                    imports (else left out, and the summary says why)
`workers_K_over_in_process` (images/s ratio, higher is better) is the speed-up of preparation.
Prints a table and, last, one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_model_options(parser)
    parser.add_argument("--n", type=int, default=256, help="images prepared per round (default 256)")
    parser.add_argument("--source-side", type=int, default=640,
                        help="side of the image files in px, which the processor resizes (default 640)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from transformers import AutoImageProcessor

    from slq.prefetch import prepare_ahead
    from slq.retriever import SLQRetriever

    backbone = common.random_backbone(args)
    encoder = SLQRetriever.fresh(backbone, num_queries=20)
    images = common.images(args.n, args.source_side, Path(tempfile.mkdtemp(prefix="slq-bench-images-")))
    jobs = [images[start:start + args.batch_size] for start in range(0, args.n, args.batch_size)]

    def prepare(workers: int, on=encoder):
        def run():
            for batch in prepare_ahead(lambda job: on.build_batch("image", job), jobs, workers=workers):
                on.backbone.place(batch)
        return run

    methods = {"in_process": prepare(0)}
    for k in sorted({1, 2, _cores()}):
        methods[f"workers_{k}"] = prepare(k)
    fast_note = None
    try:
        import torchvision  # noqa: F401
    except Exception as e:  # ImportError, or a build for another torch (RuntimeError)
        fast_note = f"torchvision does not import here ({type(e).__name__}: {str(e).splitlines()[0]})"
    else:  # both backends explicitly, whatever the backbone came with
        fast = SLQRetriever.fresh(_with_processor(backbone, AutoImageProcessor, "torchvision"), num_queries=20)
        methods["fast_in_process"] = prepare(0, fast)
        slow = SLQRetriever.fresh(_with_processor(backbone, AutoImageProcessor, "pil"), num_queries=20)
        methods["in_process"] = prepare(0, slow)

    times = common.interleaved(methods, args.rounds)
    seconds = {name: common.median(t) for name, t in times.items()}
    per_second = {name: args.n / s for name, s in seconds.items()}
    print(f"\n{args.n} images of {args.source_side} px to {args.image_side} px inputs, batch {args.batch_size}, "
          f"{_cores()} CPU cores, median of {args.rounds} rounds")
    print(f"{'method':<18}{'seconds':>9}{'images/s':>10}{'ratio':>8}")
    for name, s in seconds.items():
        print(f"{name:<18}{s:>9.2f}{per_second[name]:>10.1f}{per_second[name] / per_second['in_process']:>8.2f}")
    summary = {"cores": _cores(), "images": args.n, "batch_size": args.batch_size, "images_per_second": per_second,
               "all_seconds": times, "image_processor": type(backbone.image_processor).__name__,
               **{f"{name}_over_in_process": per_second[name] / per_second["in_process"]
                  for name in methods if name != "in_process"}}
    if fast_note:
        summary["fast_note"] = fast_note
        print(f"\nfast_in_process left out: {fast_note}")
    print(json.dumps(summary))


def _with_processor(backbone, auto, backend: str):
    """The backbone with its image processor loaded again under transformers' `backend`."""
    import copy

    other = copy.copy(backbone)
    other.image_processor = auto.from_pretrained(_processor_dir(backbone), backend=backend)
    return other


def _processor_dir(backbone) -> str:
    folder = Path(tempfile.mkdtemp(prefix="slq-bench-processor-"))
    backbone.image_processor.save_pretrained(folder)
    return str(folder)


if __name__ == "__main__":
    main()
