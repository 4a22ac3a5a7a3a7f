"""``python -m finer``: the ``finer`` command."""

from finer.launch import console

if __name__ == "__main__":
    console()
