# Two commands do everything on a fresh machine:
#   make demo   set up (venv, packages, llama.cpp build, models) and run one voice turn
#   make test   set up and run the test suite
VENV ?= .venv
HARK := $(VENV)/bin/hark

.PHONY: setup demo test bench clean

setup:
	@bash scripts/setup.sh

demo: setup
	$(HARK) demo

test: export HARK_WITH_BROWSER ?= 1
test: setup
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

bench: setup
	$(HARK) bench latency --quick --json out/bench_latency.json --plot out/bench_latency.png

clean:
	rm -rf $(VENV) out
