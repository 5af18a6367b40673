"""`python -m dfjob`."""

from dfjob.cli import main

if __name__ == "__main__":
    main()
