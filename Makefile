# The whole set-up on a fresh machine is `make demo` or `make test`: each creates
# .venv when absent and installs what it needs (torch pinned to the CPU build).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
EXTRAS := dev,onnx,openvino,quant,bench,serve,serve-test,lora,ray
STAMP := $(VENV)/.sdopt-installed

.PHONY: demo test clean-demo

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[$(EXTRAS)]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/demo.sh

clean-demo:
	rm -rf models/tiny reports/demo
