"""Run a service as `nameko run` would, with its config read over the kit's base.yml.

    python -m services.common.run registry [bench.ping_service ...]

nameko 2 reads one `--config` file; this runner gives every service the shared base
(broker, store, outbox, logging) so a service's own file holds only what is its own.
Anything after the service name runs in the same process (the benches' empty RPC).
"""
import eventlet

eventlet.monkey_patch()  # before anything imports socket or threading, as `nameko run`

import argparse  # noqa: E402
import logging.config  # noqa: E402
import sys  # noqa: E402
from collections.abc import Sequence  # noqa: E402

from nameko.cli.run import import_service, run  # noqa: E402

from services.common.config import load_config, service_config_path  # noqa: E402


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m services.common.run")
    parser.add_argument("service", help="a folder of services/, e.g. registry")
    parser.add_argument("beside", nargs="*", help="more `module[:Class]` to run with it")
    args = parser.parse_args(argv)
    config = load_config(service_config_path(args.service))
    logging.config.dictConfig(config["LOGGING"])
    # `module:Class`: a bare module would make nameko also try to run imported mixins
    classes = import_service(f"services.{args.service}.service:Service")
    for module in args.beside:
        classes += import_service(module)
    run(classes, config)


if __name__ == "__main__":
    sys.exit(main())
