"""`python -m dfjob`."""

from dfjob.entry import main

if __name__ == "__main__":
    main()
