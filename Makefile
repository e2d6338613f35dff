.DEFAULT_GOAL := help
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PROTO := proto/genservice/v1/genservice.proto

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(STAMP) ## make the virtual env in .venv with every dependency

run: $(STAMP) ## start Postgres, demo-llm (unless OPENAI_BASE_URL is set), a genservice and a gateway per core; Ctrl-C stops all
	$(BIN)/python -m genservice.supervisor

test: $(STAMP) proto-check ## run every test (installs Debian's chromium, and Node with the AI SDK client, where it can)
	$(BIN)/python -m tests.support.browser
	$(BIN)/python -m tests.support.aisdk
	$(BIN)/pytest

proto: $(STAMP) ## regenerate the gRPC stubs (and typed .pyi) from proto/
	PATH=$(BIN):$$PATH $(BIN)/python -m grpc_tools.protoc -Iproto --python_out=. --grpc_python_out=. \
		--mypy_out=. --mypy_grpc_out=. $(PROTO)

proto-check: $(STAMP) ## fail when the committed stubs are stale
	@tmp=$$(mktemp -d) && \
	PATH=$(BIN):$$PATH $(BIN)/python -m grpc_tools.protoc -Iproto --python_out=$$tmp --grpc_python_out=$$tmp \
		--mypy_out=$$tmp --mypy_grpc_out=$$tmp $(PROTO) && \
	diff -r -x __init__.py -x __pycache__ $$tmp/genservice/v1 genservice/v1 >/dev/null || \
	{ echo "stale gRPC stubs: run 'make proto' and commit"; rm -rf $$tmp; exit 1; }; rm -rf $$tmp

lint: $(STAMP) ## ruff and mypy --strict
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy genservice gateway tests bench

bench: $(STAMP) ## benchmarks: concurrent replies (latency per reader, CPU, capacity), the CPU of each hop per token, the save path, starts, gateway memory, the resume stampede
	$(BIN)/python -m bench.replies $(BENCH_ARGS)
	$(BIN)/python -m bench.hops
	$(BIN)/python -m bench.saves
	$(BIN)/python -m bench.starts
	$(BIN)/python -m bench.gateway_memory
	$(BIN)/python -m bench.stampede

bench-quick: $(STAMP) ## the concurrent-replies benchmark at 1 and 100 streams (under 2 minutes)
	$(BIN)/python -m bench.replies --quick

bench-peer: $(STAMP) ## the concurrent-replies benchmark with the peer (resumable-stream + Redis) measured beside ours
	$(BIN)/python -m bench.replies --peer $(BENCH_ARGS)

clean: ## remove the virtual env and the embedded database
	rm -rf $(VENV) .data

.PHONY: help install run test proto proto-check lint bench bench-quick bench-peer clean
