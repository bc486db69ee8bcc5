# The whole set-up on a fresh machine is `make demo` or `make test`: each creates
# .venv when absent and installs what it needs (torch pinned to 2.13.0: the CPU build where pip finds one, as
# on our machines for Python 3.11; else PyPI's CUDA build). PYTHON=python3.13 builds it with another Python.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
EXTRAS := dev,onnx,openvino,quant,bench,serve,serve-test,lora,ray,modelopt
STAMP := $(VENV)/.sdopt-installed

.PHONY: demo test clean-demo

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[$(EXTRAS)]'
	# optimum-quanto compiles its C++ int4 unpack kernel into its own package folder the first time an int4
	# model loads (~25 s on 2 cores): built here with the rest of the install, not during the first load
	# (import sdopt first: it keeps the libraries this pulls in off the network). With this environment's ninja first on
	# PATH, as sdopt puts it when it loads quanto (sdopt/quant/quanto.py): another ninja would build the kernel again.
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -c "import sdopt; from optimum.quanto.library.extensions import get_extension; get_extension('quanto_cpp').lib" \
		|| echo "optimum-quanto's C++ kernel did not build here (no C++ compiler?): the first int4 load will try again"
	touch $(STAMP)

# Two pytest processes (pytest-xdist), each taking whole test files so a file's module fixtures are built once:
# much of the suite is single-threaded (interpreter start-up, imports, ONNX tracing, small tensors), so on
# CI's 2 cores two processes finished it in 7.5 min where one took 10.5 (side by side, 2026-12-05; 1376 tests in 9:37 in a clean clone, 2026-12-08).
# More workers than cores oversubscribe (each computes with every core); TEST_WORKERS=0 runs it in one process.
# Three on 2 cores, each torch on one thread, took 10:33 where two took 8:46-9:24 (quiet AVX-512 EPYC, 2026-12-07):
# OpenVINO's and ONNX Runtime's own pools still use every core, so a third process only adds contention.
# Files go out in the order tests/conftest.py gives (longest first, test_ray beside the short ones: see file_order there), and
# the checkpoints, exports and bench the files share are built once for both processes (conftest's built_once),
# and each process's torch takes its share of the cores (OMP_NUM_THREADS, set in conftest; 8:20 -> 6:40).
TEST_WORKERS ?= 2

test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

demo: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/demo.sh

clean-demo:
	rm -rf models/shapes models/shapes-onnx models/shapes-openvino models/shapes-int8 models/shapes-int4 reports/demo
