"""Entry point: ``python -m sandvisor.sandbox_child --channel-fd N`` or ``--template --control-fd N``."""

from __future__ import annotations

import argparse


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m sandvisor.sandbox_child")
    parser.add_argument("--channel-fd", type=int, help="run one job read from this socket")
    parser.add_argument("--template", action="store_true", help="serve forks of job children")
    parser.add_argument("--control-fd", type=int, help="the template's command socket")
    parser.add_argument("--preload", default="", help="comma-separated modules a template imports")
    options = parser.parse_args()
    if options.template:
        from sandvisor.sandbox_child.template import serve_template

        preloads = [name.strip() for name in options.preload.split(",") if name.strip()]
        serve_template(options.control_fd, preloads)
    else:
        from sandvisor.sandbox_child.host import host_job

        host_job(options.channel_fd)


if __name__ == "__main__":
    main()
