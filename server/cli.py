"""The one `duplex` command: `serve` (the daemon), `presets`, `bench model-step|latency|kernels|soak|gpu-check`,
`train` (the demonstrator, staged), `codec` (a file through a checkpoint's codec), `eval codec|model|voice`.

Each subcommand's module is imported only when it runs, so `duplex presets` stays light.
"""
from __future__ import annotations

import argparse
import importlib
import sys

BENCHES = {"model-step": "bench.model_step", "latency": "bench.latency", "kernels": "bench.kernels", "soak": "bench.soak",
           "gpu-check": "bench.gpu_check"}
EVALS = {"codec": "bench.codec", "model": "bench.conversation_eval", "voice": "bench.voice_eval"}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="duplex", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the daemon (duplex serve --help for its settings)", add_help=False)
    sub.add_parser("presets", help="print each model preset's unit layout and size", add_help=False)
    b = sub.add_parser("bench", help="run a benchmark", add_help=False)
    b.add_argument("which", choices=sorted(BENCHES))
    sub.add_parser("train", help="train the demonstrator (duplex train --help: stages, budget)", add_help=False)
    sub.add_parser("codec", help="stream a wav through a checkpoint's codec, or --eval it", add_help=False)
    e = sub.add_parser("eval", help="judge a checkpoint (duplex eval codec|model|voice --help)", add_help=False)
    e.add_argument("which", choices=sorted(EVALS))
    args, rest = parser.parse_known_args(argv)
    if args.command == "train":
        from model.run import main as train_main
        return train_main(rest)
    if args.command == "codec":
        from bench.codec import main as codec_main
        return codec_main(rest)
    if args.command == "eval":
        return importlib.import_module(EVALS[args.which]).eval_main(rest)
    if args.command == "serve":
        from server.serve import main as serve_main
        return serve_main(rest)
    if args.command == "presets":
        from server.presets_cmd import main as presets_main
        return presets_main(rest)
    return importlib.import_module(BENCHES[args.which]).main(rest)


if __name__ == "__main__":
    sys.exit(main())
