"""`python -m remit.train` = `remit-train`."""

from remit.train.cli import main

if __name__ == "__main__":  # dist_checkpointing's writer process re-imports __main__: keep this guard
    raise SystemExit(main())
