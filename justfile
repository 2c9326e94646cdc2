# sandvisor tasks; `just --list` shows them.

# the whole test suite (the command CI runs)
test *args:
    uv run pytest {{args}}

# A request that would leave this machine fails at once (a dead proxy); the tests' own servers on
# 127.0.0.1 are still reached.
# every test not marked `network`, with no route to any package index
test-offline *args:
    HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 ALL_PROXY=http://127.0.0.1:9 \
    http_proxy=http://127.0.0.1:9 https_proxy=http://127.0.0.1:9 all_proxy=http://127.0.0.1:9 \
    NO_PROXY=127.0.0.1,localhost,::1 no_proxy=127.0.0.1,localhost,::1 \
    uv run pytest -m "not network" {{args}}

lint:
    uv run ruff check src tests benchmarks
    uv run ruff format --check src tests benchmarks

fmt:
    uv run ruff check --fix src tests benchmarks
    uv run ruff format src tests benchmarks

# hostile jobs only
chaos *args:
    uv run pytest tests/chaos {{args}}

# figures and ratios measured in one run (not tests)
bench:
    uv run python -m benchmarks

# as worker-flash's `make test-handler`: runpod's --test_input with each job in examples/;
# every examples/*.json through `sandvisor serve --test_input`; examples/failing/ must fail
test-handler:
    #!/usr/bin/env bash
    set -uo pipefail
    export RUNPOD_SKIP_AUTO_SYSTEM_CHECKS=true RUNPOD_SKIP_GPU_CHECK=true
    log=$(mktemp); trap 'rm -f "$log"' EXIT
    failed=0
    for job in examples/*.json examples/failing/*.json; do
        uv run --quiet sandvisor serve --rp_log_level WARN --test_input "$(cat "$job")" >"$log" 2>&1
        code=$?
        case "$job" in examples/failing/*) want=1 ;; *) want=0 ;; esac
        if [ "$code" -eq "$want" ]; then echo "ok    $job"; else echo "FAIL  $job (exit $code)"; cat "$log"; failed=1; fi
    done
    exit $failed

image := "sandvisor"

# GPU worker image (PyTorch CUDA runtime base)
build tag="gpu":
    docker build -f Dockerfile -t {{image}}:{{tag}} .

# CPU worker image (python slim base)
build-cpu tag="cpu":
    docker build -f Dockerfile-cpu -t {{image}}:{{tag}} .
