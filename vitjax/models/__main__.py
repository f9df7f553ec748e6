"""``python -m vitjax.models``: the model table (params, PaddleClas-style FLOPs, total GMACs)."""

import argparse

from vitjax.models.complexity import model_table
from vitjax.models.registry import list_models


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m vitjax.models", description=__doc__)
    parser.add_argument("--include-test", action="store_true", help="also list the test-size variants")
    args = parser.parse_args()
    print(model_table(list_models(include_test=args.include_test)))


if __name__ == "__main__":
    main()
