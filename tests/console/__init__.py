"""Console tests: a package, so its conftest is `console.conftest` and does not shadow tests/conftest.py."""
