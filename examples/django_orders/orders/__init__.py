"""The ``orders`` app: one model, create/list views and a view that calls shipping."""
