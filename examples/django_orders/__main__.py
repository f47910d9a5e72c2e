"""``python -m chttp_examples.django_orders <command>``: the example's ``manage.py``."""

from __future__ import annotations

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chttp_examples.django_orders.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line([f"{sys.executable} -m chttp_examples.django_orders", *sys.argv[1:]])


if __name__ == "__main__":
    main()
