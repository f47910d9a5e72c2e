"""The Django order service's settings plus test-only views (tests.examples.django_test_urls)."""

from __future__ import annotations

from chttp_examples.django_orders.settings import *  # noqa: F401,F403

ROOT_URLCONF = "tests.examples.django_test_urls"
