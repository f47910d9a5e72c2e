"""The Django order service's settings plus test-only views (tests.examples.django_test_urls)."""

from __future__ import annotations

from chttp_examples.django_orders.settings import *

ROOT_URLCONF = "tests.examples.django_test_urls"
