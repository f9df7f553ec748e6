"""tfds builders the tests build locally (tfds needs them inside a package)."""
