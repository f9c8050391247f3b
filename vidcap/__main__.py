"""Command line: ``python -m vidcap tiny-model DIR``, ``python -m vidcap demo DIR``,
``python -m vidcap stats OUTPUT``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vidcap", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    tiny = sub.add_parser("tiny-model", help="build a random-weight Qwen-VL checkpoint (gibberish captions): tiny "
                          "for tests, or a real model's architecture for GPU speed measurements")
    tiny.add_argument("dir")
    tiny.add_argument("--arch", choices=["qwen2_vl", "qwen2_5_vl", "qwen3_vl"], default="qwen2_vl")
    tiny.add_argument("--size", default="tiny", help="tiny (default), or a published model's dimensions: 7b for "
                      "qwen2_vl and qwen2_5_vl, 8b for qwen3_vl (about 16 GB of bf16 weights, written shard by shard)")
    tiny.add_argument("--config-only", action="store_true", help="config, tokenizer and processor, no weights")
    demo = sub.add_parser("demo", help="make synthetic demo videos and a records.json")
    demo.add_argument("dir")
    stats = sub.add_parser("stats", help="summarize a finished build's output file: status counts, "
                           "error reasons, lengths")
    stats.add_argument("output", help="the workflow's output file (.json or .jsonl)")
    stats.add_argument("--results", help="the workflow's results folder: adds wall time per step "
                       "from its benchmark files")
    stats.add_argument("--model", help="model id or folder to name in the summary")
    stats.add_argument("--caption-key", default="caption",
                       help="record key holding the caption (config keys.caption)")
    args = parser.parse_args(argv)

    if args.command == "tiny-model":
        from vidcap.tiny_model import build_tiny_model

        try:
            out = build_tiny_model(args.dir, args.arch, args.size, config_only=args.config_only)
        except ValueError as exc:
            parser.error(str(exc))
        print(f"{args.size} {args.arch} model (random weights, gibberish captions) in {out}")
    elif args.command == "demo":
        from vidcap.demo import make_demo

        print(f"demo records: {make_demo(args.dir)}")
    elif args.command == "stats":
        from vidcap.stats import benchmark_files, format_summary, read_benchmarks, summarize_output

        summary = summarize_output(args.output, {"caption": args.caption_key})
        steps = read_benchmarks(benchmark_files(f"{args.results}/benchmarks")) if args.results else None
        print(format_summary(summary, steps, args.model))
    return 0


if __name__ == "__main__":
    sys.exit(main())
