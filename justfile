# sandvisor tasks; `just --list` shows them.

# the whole test suite (the command CI runs)
test *args:
    uv run pytest {{args}}

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
