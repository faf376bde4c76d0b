"""``python -m egecmp_ray``: the ``egecmp`` command without its console script."""

from egecmp_ray.cli import main

if __name__ == "__main__":
    main()
