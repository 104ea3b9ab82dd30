"""``probe ppl``: perplexity on held-out text."""

from __future__ import annotations

import argparse
from pathlib import Path

from probe.cli.common import add_command, add_model_args, positive_int, refuse_offload
from probe.errors import ProbeError


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``probe ppl`` to the subcommands."""
    p = add_command(sub, "ppl", "perplexity on held-out text with its 95%% interval (the LLM-pruning papers' measure; "
                         "any causal language model, or an LVLM's language side)",
                         "  probe ppl meta-llama/Llama-3.1-8B --text wikitext2_test.txt --seq-len 2048\n"
                         "  probe ppl runs/llama-wanda-50 --text wikitext2_test.txt --seq-len 2048 --out ppl.json\n")
    add_model_args(p)
    p.add_argument("--text", type=Path, required=True, help="a UTF-8 text file of held-out text")
    p.add_argument("--seq-len", type=positive_int, default=512, help="tokens per window (one forward each)")
    p.add_argument("--max-windows", type=positive_int, default=None, help="measure on at most this many windows")
    p.add_argument("--out", type=Path, default=None, help="also write the result as JSON here")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=cmd_ppl)


def cmd_ppl(args: argparse.Namespace) -> int:
    import json

    from probe.core.manifest import check_output_file, write_text_atomic
    from probe.core.progress import quiet_libraries
    from probe.evaluation.perplexity import perplexity
    from probe.models.loading import load_model, parse_dtype

    refuse_offload(args, "ppl")
    if args.max_pixels is not None:
        raise ProbeError("--max-pixels caps image resolution; probe ppl reads text only")
    if not args.text.is_file():
        raise ProbeError(f"--text {args.text}: no such file")
    try:
        text = args.text.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ProbeError(f"--text {args.text}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if args.out is not None:
        check_output_file(args.out)
    with quiet_libraries(args.no_progress):
        loaded = load_model(args.model, dtype=parse_dtype(args.dtype), device=args.device)
        tokenizer = getattr(loaded.processor, "tokenizer", loaded.processor)
        result = perplexity(loaded.model, tokenizer, text, args.seq_len, args.max_windows,
                            show_progress=not args.no_progress)
    print(f"{args.model}: {result}")
    if args.out is not None:
        record = {"model": args.model, "text": str(args.text), **result.to_dict()}
        write_text_atomic(args.out, json.dumps(record, indent=2) + "\n")
    return 0
