.PHONY: setup run test test-fast lint format

setup:
	bash scripts/setup.sh

# The main job: the live webcam overlay window (without a camera it says how to run on a file, URL or page).
run: setup
	.venv/bin/stream-detector webcam $(ARGS)

# The tests cover the cluster mode too: the Ray extra is installed for them.
test: setup
	bash scripts/setup.sh --cluster
	bash scripts/setup_test_system.sh
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/python -m pytest -q -rs $(PYTEST_ARGS)

# Pure logic only (no model, no MediaPipe, no servers, no subprocesses): well under a minute.
test-fast: setup
	.venv/bin/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

format:
	.venv/bin/ruff format . && .venv/bin/ruff check --fix .
