"""`demo-llm` (or `python -m genservice.demo_llm`): serve the demo model until interrupted."""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import replace

import uvicorn

from genservice.demo_llm.app import create_app
from genservice.demo_llm.config import DemoLLMConfig, parse_addr
from genservice.demo_llm.wire import DEFAULT_MODEL

logger = logging.getLogger("genservice.demo_llm")

_ENV_HELP = """environment:
  DEMO_LLM_ADDR   HOST:PORT to listen on (default 127.0.0.1:8181; --addr overrides it)
  DEMO_LLM_DELAY  seconds to wait before each chunk of the reply (default 0.05)
  DEMO_LLM_CHUNK  characters per streamed chunk (default 4)

Point the generation service at it with an OpenAI base URL of http://HOST:PORT/v1 and model "demo"."""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="demo-llm",
        description="An offline OpenAI-compatible chat-completions server that streams a canned reply slowly.",
        epilog=_ENV_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--addr", metavar="HOST:PORT", help="address to listen on (overrides DEMO_LLM_ADDR)")
    args = parser.parse_args(argv)
    try:
        config = DemoLLMConfig.from_env(os.environ)
        if args.addr is not None:
            host, port = parse_addr(args.addr)
            config = replace(config, host=host, port=port)
    except ValueError as err:
        parser.error(str(err))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logger.info("serving model %r on http://%s:%d/v1", DEFAULT_MODEL, config.host, config.port)
    uvicorn.run(create_app(config), host=config.host, port=config.port, log_config=None)


if __name__ == "__main__":
    main()
