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
    just test-lb-handler || failed=1
    exit $failed

# as worker-flash's `make test-lb-handler`: every examples/*.json POSTed to /execute of
# `sandvisor serve --lb` on 127.0.0.1; examples/failing/ must answer success: false
test-lb-handler:
    #!/usr/bin/env bash
    set -uo pipefail
    uv run --quiet python - <<'EOF'
    import glob, json, os, socket, subprocess, sys, time, urllib.request
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    log = open(os.devnull, "w")
    server = subprocess.Popen(["sandvisor", "serve", "--lb", "--host", "127.0.0.1", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
    def status(path):
        try:
            with urllib.request.urlopen(url + path, timeout=1) as answer:
                return answer.status
        except OSError:
            return 0
    failed = 0
    try:
        deadline = time.monotonic() + 60
        while status("/ping") != 200:
            if time.monotonic() > deadline or server.poll() is not None:
                sys.exit("FAIL  the LB worker did not answer /ping with 200")
            time.sleep(0.2)
        for job in sorted(glob.glob("examples/*.json")) + sorted(glob.glob("examples/failing/*.json")):
            body = open(job, "rb").read()
            request = urllib.request.Request(url + "/execute", data=body, headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=120) as answer:
                response = json.loads(answer.read())
            want = not job.startswith("examples/failing/")
            ok = response.get("success") is want
            print(f"{'ok   ' if ok else 'FAIL '} lb {job}")
            failed |= not ok
    finally:
        server.terminate()
        server.wait(30)
    sys.exit(failed)
    EOF

image := "sandvisor"

# GPU worker image (PyTorch CUDA runtime base)
build tag="gpu":
    docker build -f Dockerfile -t {{image}}:{{tag}} .

# CPU worker image (python slim base)
build-cpu tag="cpu":
    docker build -f Dockerfile-cpu -t {{image}}:{{tag}} .
