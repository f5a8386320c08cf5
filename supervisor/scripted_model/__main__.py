"""python -m supervisor.scripted_model --port 0 --script NAME[:ARG]  (prints its URL on the first line)"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys

from supervisor.scripted_model.messages import Usage
from supervisor.scripted_model.scripts import SCRIPTS, make_script
from supervisor.scripted_model.server import FakeModelServer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m supervisor.scripted_model", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--script", default="hello", help=f"one of {', '.join(sorted(SCRIPTS))}, optionally NAME:ARG")
    parser.add_argument("--input-tokens", type=int, default=Usage.input_tokens)
    parser.add_argument("--output-tokens", type=int, default=Usage.output_tokens)
    args = parser.parse_args(argv)

    server = FakeModelServer(
        make_script(args.script),
        usage=Usage(args.input_tokens, args.output_tokens),
        host=args.host,
        port=args.port,
    )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(server.base_url, flush=True)
    with contextlib.suppress(KeyboardInterrupt, SystemExit):
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
