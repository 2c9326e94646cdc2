"""Parity rows: Output order and logging configuration."""

from __future__ import annotations

from tests.parity.harness import Scenario

OUTPUT_AND_LOGGING = [
    Scenario(
        "print_and_stderr_interleaved",
        """
        import sys

        def main():
            print("one")
            print("two", file=sys.stderr)
            print("three")
            sys.stderr.write("four\\n")
            return 4
        """,
    ),
    Scenario(
        "logging_unconfigured_warning",
        """
        import logging

        def main():
            print("before")
            logging.warning("disk at %d%%", 91)
            print("after")
        """,
    ),
    Scenario(
        "logging_basic_config",
        """
        import logging
        import sys

        def main():
            logging.basicConfig(level=logging.DEBUG, format="%(levelname)s|%(name)s|%(message)s")
            logging.getLogger("app").debug("debugging")
            logging.info("informing")
            print("printed", file=sys.stderr)
        """,
    ),
    Scenario(
        "logging_custom_handler_to_stdout",
        """
        import logging
        import sys

        def main():
            logger = logging.getLogger("job")
            handler = logging.StreamHandler(sys.stdout)
            handler.setFormatter(logging.Formatter("[%(name)s] %(levelname)s %(message)s"))
            logger.addHandler(handler)
            logger.setLevel(logging.DEBUG)
            logger.propagate = False
            logger.debug("detail")
            print("between")
            logger.error("bad")
        """,
    ),
    Scenario(
        "argparse_sees_no_runtime_flags",
        """
        import argparse
        import sys

        def main():
            parser = argparse.ArgumentParser()
            parser.add_argument("--verbose", action="store_true")
            return [sys.argv[1:], vars(parser.parse_args())]
        """,
    ),
    Scenario(
        "logging_named_logger_last_resort",
        """
        import logging

        def main():
            logging.getLogger("app.db").error("no handler anywhere: %s", "last resort")
            print("after")
        """,
    ),
    Scenario(
        "logging_exception_with_traceback",
        """
        import logging

        def main():
            logging.basicConfig(format="%(levelname)s %(name)s %(message)s")
            try:
                {}["missing"]
            except KeyError:
                logging.getLogger("job").exception("lookup failed")
            return "handled"
        """,
    ),
    Scenario(
        "logging_dict_config_to_stdout_and_stderr",
        """
        import logging
        import logging.config
        import threading

        def main():
            logging.config.dictConfig({
                "version": 1,
                "formatters": {"short": {"format": "%(threadName)s %(levelname)s %(message)s"}},
                "handlers": {
                    "out": {"class": "logging.StreamHandler", "stream": "ext://sys.stdout",
                            "formatter": "short", "level": "DEBUG"},
                    "err": {"class": "logging.StreamHandler", "formatter": "short",
                            "level": "ERROR"},
                },
                "root": {"level": "DEBUG", "handlers": ["out", "err"]},
            })
            logging.debug("debug")
            worker = threading.Thread(target=logging.error, args=("from a thread",), name="w1")
            worker.start()
            worker.join()
            logging.info("done")
        """,
    ),
    Scenario(
        "logging_info_without_config_is_hidden",
        """
        import logging

        def main():
            logging.getLogger("quiet").info("not shown by default")
            return "done"
        """,
    ),
    Scenario(
        "threads_and_thread_pool",
        """
        import threading
        from concurrent.futures import ThreadPoolExecutor

        def main():
            results = {}
            def work(i):
                results[i] = i * i
            threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            with ThreadPoolExecutor(3) as pool:
                pooled = list(pool.map(lambda x: x + 1, range(5)))
            print("threads done")
            return [sorted(results.items()), pooled, threading.current_thread().name]
        """,
    ),
]
