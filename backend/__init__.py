"""The service Label Studio talks to: HTTP (``app``), what each call does (``service``), the models in service,
Label Studio synchronisation, background work and the training-job runner; ``python -m backend`` is the CLI."""
