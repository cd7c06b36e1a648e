"""``python -m xaikit.train RECIPE``: see `xaikit.train.cli.main`."""

from .cli import main

if __name__ == "__main__":
    main()
