"""The Django order service's settings plus test-only views (tests.examples.django_test_urls).

``CHTTP_TEST_UPLOAD_MAX``: Django's ``DATA_UPLOAD_MAX_MEMORY_SIZE`` in bytes (Django's
default, 2.5 MB, when unset).
"""

from __future__ import annotations

import os

from chttp_examples.django_orders.settings import *

ROOT_URLCONF = "tests.examples.django_test_urls"

if os.environ.get("CHTTP_TEST_UPLOAD_MAX"):
    DATA_UPLOAD_MAX_MEMORY_SIZE = int(os.environ["CHTTP_TEST_UPLOAD_MAX"])
