"""``python -m origin_stub``: run the origin stub (see :mod:`origin_stub.cli`)."""

from origin_stub.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
